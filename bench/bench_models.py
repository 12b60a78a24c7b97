"""Memory per served model: the resident set size (RSS) one model adds to ``w2v serve``.

Figures per model (``models.NAME.``): ``loaded_mib``, ``after_recognize_mib``,
``after_stream_mib``, ``after_unload_mib`` (RSS above ``rss_before_mib``, the process after the
service's imports), ``disk_mib`` (the model directory), ``runtime`` and ``precision``.

Each model is measured in a fresh process (the embedded backend, ONNX Runtime or the runtime
``auto`` picks): RSS after the service's imports, after the model loads (its streaming sessions:
what a registry load costs), after its first Recognize (the offline Engine and the decoder, with
the model's LM when it ships one) and after its first stream; then after the registry unloads it
(what the allocator hands back). Models: the bundled one, and a BASE-size model (95 M parameters,
random weights) exported here.

    python -m bench models            # both
    python -m bench models --quick    # the bundled model only
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUDIO_SECONDS = 5.0


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure(model_dir: str) -> dict:
    """In this process: RSS at each step of serving ``model_dir``, in MiB."""
    import asyncio

    import numpy as np

    from w2v_serve.cli.options import decoder_options
    from w2v_serve.service.backends import StreamOptions
    from w2v_serve.service.backends.embedded import EmbeddedBackend
    from w2v_serve.service.models import ModelEntry, ModelRegistry
    import argparse

    args = argparse.Namespace(decoder=None, beam_width=64, lm=None, no_lm=False, unigrams=None, alpha=None,
                              beta=None, hotword_weight=10.0)
    steps = {"imports": _rss_mib()}
    entry = ModelEntry.from_directory(model_dir, "m")
    registry = ModelRegistry([entry, ModelEntry(entry.name + "2", entry.path)],
                             lambda e: EmbeddedBackend(e.path, decoder=decoder_options(args, e.path)),
                             idle_unload_s=1.0)
    audio = (np.random.default_rng(0).standard_normal(int(16000 * AUDIO_SECONDS)) * 0.1).astype(np.float32)

    async def run() -> None:
        async with registry.lease("m2") as backend:          # loaded on first use, as a second model is
            steps["loaded"] = _rss_mib()
            await backend.recognize(audio, StreamOptions())
            steps["after_recognize"] = _rss_mib()
            stream = await backend.open_stream(StreamOptions())
            for i in range(0, len(audio), 3200):
                await stream.send(audio[i:i + 3200], end=i + 3200 >= len(audio))
            steps["after_stream"] = _rss_mib()
            steps_runtime.update(runtime=backend.runtime, precision=backend.precision)
    steps_runtime: dict = {}
    asyncio.run(run())
    registry.unload_idle(now=1e12)
    steps["after_unload"] = _rss_mib()
    base = steps.pop("imports")
    return {"rss_before_mib": round(base, 1),
            **{f"{k}_mib": round(v - base, 1) for k, v in steps.items()},
            "disk_mib": round(sum(f.stat().st_size for f in Path(model_dir).iterdir() if f.is_file()) / 2**20, 1),
            **steps_runtime}


def _in_fresh_process(model_dir: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.bench_models", "--measure", str(model_dir)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    from w2v_serve.model_dir import default_model_dir

    argv = list(argv or [])
    models = {"bundled": default_model_dir()}
    with tempfile.TemporaryDirectory() as tmp:
        if "--quick" not in argv:
            from bench.bench_engine import export_ours

            models["base_random"] = export_ours(Path(tmp) / "base")
        results = {name: _in_fresh_process(path) for name, path in models.items()}
    return {"audio_seconds": AUDIO_SECONDS, "models": results}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2])))
    else:
        print(json.dumps(main(sys.argv[1:]), indent=2))
