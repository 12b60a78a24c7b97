"""What the Ray path costs on one host, and how it spreads work over two Ray nodes.

Same files (espeak-ng sentences, 16 kHz WAV), same bundled model and decoder (its defaults: beam
search with its LM), default --batch-size and --threads, each run a fresh `w2v transcribe` process:

* ``single_host`` - ``w2v transcribe --format jsonl --files-from LIST`` (stdout to a file).
* ``ray_1node``   - ``--ray ADDRESS --output-dir DIR`` against a running local cluster of one node
                    with 2 CPUs (its start-up not counted; the driver's connect and the pipeline's
                    start are).
* ``ray_1file``   - the same on one file: the start-up cost of a Ray job (connect, actor start, model
                    load), which larger jobs amortize.
* ``ray_2nodes``  - a cluster of two nodes with 2 CPUs each on the same host (one model actor per
                    node): wall time, and files / audio per node (the driver's spread report).

Then each stage's cost in CPU seconds per audio second, run in this process without Ray (so
without its overhead; ``time.process_time``, which other work on the machine does not inflate
the way it does wall time): ``load`` (probe, decode, batch plan), ``model`` (the actor's
engine, default threads), ``decode`` (the CTC decode with the model's decoder), for the bundled
model and for a BASE-size model (95 M, random weights with a calibrated CTC head and a 3-gram LM,
as in bench_transcribe; ``--no-base`` skips it). docs/batch.md sizes nodes from these.

Clusters run in a network namespace of their own (tests/ray_helpers.py). Every Ray run's
transcripts are checked against single-host's (the same JSON objects). Figures are medians of
REPEATS; the load average before and after is recorded with them (other work on the machine
slows every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Figure -> unit, where the name's suffix would mislead (bench.records).
UNITS = {f"{run}.audio_s_per_wall_s": "audio s / s" for run in ("single_host", "ray_1node", "ray_2nodes")}
UNITS.update({f"stages_{m}.{k}_cpu_s_per_audio_s": "CPU s / audio s" for m in ("bundled", "base")
              for k in ("load", "model", "decode", "total")})
N_FILES = 32
REPEATS = 3
WORDS = ["red", "green", "blue", "yellow", "black", "white", "small", "large", "happy", "quiet"]
NOUNS = ["cat", "dog", "house", "river", "garden", "window", "table", "doctor"]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-us+m3", "en-029", "en-gb-scotland"]


def _corpus(directory: Path, n: int) -> tuple[Path, float]:
    import soundfile as sf

    paths, seconds = [], 0.0
    for i in range(n):
        path = directory / f"s{i:03d}.wav"
        text = (f"the {WORDS[i % len(WORDS)]} {NOUNS[(i * 3) % len(NOUNS)]} walked to the "
                f"{NOUNS[(i * 5 + 1) % len(NOUNS)]} number {i}")
        subprocess.run(["espeak-ng", "-v", VOICES[i % len(VOICES)], "-s", "170", "-w", str(path), text],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds += sf.info(str(path)).duration
        paths.append(str(path))
    listing = directory / "inputs.txt"
    listing.write_text("".join(p + "\n" for p in paths))
    return listing, seconds


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "w2v_serve.cli", "transcribe", *args]


def _env() -> dict:
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            "RAY_AUTH_MODE": "disabled"}


def _timed(argv: list[str], run=subprocess.run, **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    r = run(argv, capture_output=True, text=True, timeout=900, **kwargs)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}... exit {r.returncode}:\n{r.stderr[-3000:]}")
    return elapsed, r


def _rows(directory: Path) -> dict:
    return {json.loads(line)["path"]: json.loads(line) for shard in directory.glob("part-*.jsonl") for line in shard.open()}


def _spread(stderr: str) -> list[dict]:
    """The driver's report: 'model actors' nodes: ID N files H h, ...'."""
    m = re.search(r"model actors' nodes: (.*)", stderr)
    if not m:
        return []
    return [{"node": node, "files": int(files), "audio_h": float(hours)}
            for node, files, hours in re.findall(r"(\S+) (\d+) files ([0-9.]+) h", m.group(1))]


def _ray_runs(cluster, listing: Path, work: Path, repeats: int, reference, tag: str) -> dict:
    times, spreads = [], []
    for k in range(repeats):
        out = work / f"{tag}-{k}"
        t, r = _timed(cluster.command(_cli("--ray", cluster.address, "--format", "jsonl", "--output-dir", str(out),
                                           "--files-from", str(listing))), env=cluster.env)
        rows = _rows(out)
        if reference is not None and rows != reference:
            raise RuntimeError(f"{tag}: the Ray path's transcripts differ from single-host's")
        times.append(t)
        spreads.append(_spread(r.stderr))
    return {"wall_s": [round(t, 2) for t in times], "median_s": round(statistics.median(times), 2),
            "spread": spreads[-1]}


def _stage_costs(model_dir: str, decoder, files: list[str], repeats: int) -> dict:
    """CPU seconds per audio second of each stage, in this process (medians of ``repeats``)."""
    import pickle

    from w2v_serve.batch_ray import RayJob, _actor_class, _rows, decode_stage, load_stage
    from w2v_serve.engine import EngineOptions

    job = RayJob(model=model_dir, decoder=decoder, engine=EngineOptions())
    chunk = {"chunk": [0], "paths": [pickle.dumps(files)]}
    actor = _actor_class(job)()
    costs: dict = {"load": [], "model": [], "decode": []}
    audio_s = 0.0
    for _ in range(repeats):
        t = time.process_time()
        loaded = list(load_stage(chunk, job, cpu=True))
        costs["load"].append(time.process_time() - t)
        t = time.process_time()
        modeled = [actor(b) for b in loaded]
        costs["model"].append(time.process_time() - t)
        t = time.process_time()
        decoded = [decode_stage(b, job) for b in modeled]
        costs["decode"].append(time.process_time() - t)
        audio_s = sum(item[3] for b in decoded for _, _, items in _rows(b) for item in items)
    out = {f"{k}_cpu_s_per_audio_s": round(statistics.median(v) / audio_s, 5) for k, v in costs.items()}
    out["audio_s"] = round(audio_s, 2)
    out["total_cpu_s_per_audio_s"] = round(sum(out[f"{k}_cpu_s_per_audio_s"] for k in costs), 5)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench ray")
    parser.add_argument("--files", type=int, default=N_FILES)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--no-base", action="store_true", help="skip the BASE-size model's stage costs")
    args = parser.parse_args(argv or [])

    import onnxruntime
    import ray

    from tests.ray_helpers import LocalCluster, available

    why = available()
    if why:
        raise RuntimeError(f"cannot run a local Ray cluster here: {why}")
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": os.getloadavg(),
                    "versions": {"ray": ray.__version__, "onnxruntime": onnxruntime.__version__},
                    "files": args.files, "repeats": args.repeats}
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        listing, audio_s = _corpus(work, args.files)
        result["audio_s"] = round(audio_s, 2)
        one = work / "one.txt"
        one.write_text(listing.read_text().splitlines()[0] + "\n")

        times, reference = [], {}
        for _ in range(args.repeats):
            t, r = _timed(_cli("--format", "jsonl", "--files-from", str(listing)), env={**_env(), "W2V_NO_PROGRESS": "1"})
            times.append(t)
            reference = {json.loads(line)["path"]: json.loads(line) for line in r.stdout.splitlines()}
        single = statistics.median(times)
        result["single_host"] = {"wall_s": [round(t, 2) for t in times], "median_s": round(single, 2)}

        with LocalCluster(node_cpus=(2,)) as cluster:
            result["ray_1node"] = _ray_runs(cluster, listing, work, args.repeats, reference, "one-node")
            # One file alone is one batch of one: a quantized model's numerics differ from its batch of 8.
            result["ray_1file"] = _ray_runs(cluster, one, work, args.repeats, None, "one-file")
        with LocalCluster(node_cpus=(2, 2)) as cluster:
            result["ray_2nodes"] = _ray_runs(cluster, listing, work, args.repeats, reference, "two-nodes")

        for key in ("single_host", "ray_1node", "ray_2nodes"):
            result[key]["audio_s_per_wall_s"] = round(audio_s / result[key]["median_s"], 2)
        result["ray_1node_over_single_host"] = round(result["ray_1node"]["median_s"] / single, 2)
        result["ray_2nodes_over_single_host"] = round(result["ray_2nodes"]["median_s"] / single, 2)

        from w2v_serve.decoding import options_for_model
        from w2v_serve.model_dir import default_model_dir

        files = listing.read_text().split()
        bundled = str(default_model_dir())
        result["stages_bundled"] = _stage_costs(bundled, options_for_model(bundled), files, args.repeats)
        if not args.no_base:
            from bench.bench_transcribe import BEAM_WIDTH, _setup
            from w2v_serve.decoding import DecoderOptions

            base = _setup(work / "base")
            decoder = DecoderOptions(method="beam", beam_width=BEAM_WIDTH, lm=str(base["lm"]))
            result["stages_base"] = _stage_costs(str(base["model_dir"]), decoder, [str(f) for f in base["files"]],
                                                 args.repeats)
        result["load_after"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return result
