"""Streaming vs offline on the same model and audio, same run.

* compute per second of audio: streaming (per window setting) / offline, medians of repeats;
* latency after the audio is sent: partial (a chunk's look-ahead arrived -> its result) and
  final (end of stream -> final result), p50 / p95 over chunks and streams;
* concurrent real-time streams on this machine: N streams fed in 200 ms pieces, batched by
  ``accept_many``; compute time / audio time per N (sustainable while < 1).

Model: the bundled default model when present, else a random-init model of the same (small)
architecture — the compute is the same; transcripts are not looked at here.
"""

from __future__ import annotations

from typing import Optional

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from w2v_serve.decoding import CTCDecoder
from w2v_serve.engine import Engine, EngineOptions
from w2v_serve.model_dir import default_model_dir
from w2v_serve.streaming import StreamingConfig, StreamingRecognizer

PIECE = 3200  # 200 ms of 16 kHz audio per message, as a client sends it
TEST = Path(__file__).resolve().parent.parent / "data" / "synth" / "test.tsv"


def _model_dir() -> tuple[Path, str]:
    d = default_model_dir()
    if d is not None:
        return d, "bundled default model"
    import torch

    from export.exporter import export_model
    from training.checkpoint import Checkpoint
    from training.model import wav2vec2_small
    from w2v_serve.vocab import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary.from_characters("abcdefghijklmnopqrstuvwxyz'")
    out = Path(tempfile.mkdtemp(prefix="w2v-bench-stream-")) / "model"
    export_model(Checkpoint.from_model(wav2vec2_small(vocab_size=len(vocab)).eval(), vocab), out, check=False)
    return out, "random-init small preset (default model not bundled yet)"


def _audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def _offline_seconds(engine: Engine, decoder: CTCDecoder, audio: np.ndarray, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        decoder.decode(engine.log_probs(audio))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _stream_once(rec: StreamingRecognizer, audio: np.ndarray, sid) -> tuple[float, list[float], float]:
    """(compute seconds, partial latencies, final latency) for one stream fed as fast as possible."""
    rec.start(sid)
    compute, partial = 0.0, []
    for k in range(0, len(audio), PIECE):
        end = k + PIECE >= len(audio)
        t = time.perf_counter()
        results = rec.accept(sid, audio[k:k + PIECE], end=end)
        dt = time.perf_counter() - t
        compute += dt
        if not end and results:
            partial.append(dt)
    return compute, partial, dt


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000 if xs else float("nan")


def accuracy_vs_offline(model_dir: Path, settings: dict, limit: int = 150) -> dict:
    """Greedy WER/CER of each window setting vs offline on the held-out synthetic test set."""
    from w2v_serve.scoring import normalize_for_scoring as norm
    from training.manifest import read_manifest
    from w2v_serve.scoring import error_counts
    from w2v_serve.audio import load_audio
    from w2v_serve.transcribe import Transcriber

    utts = read_manifest(TEST)[:limit]
    refs = [norm(u.text or "") for u in utts]

    def rates(hyps):
        c = error_counts(refs, hyps)
        return {"wer": round(c["word_errors"] / c["words"], 4), "cer": round(c["char_errors"] / c["chars"], 4)}

    offline = [norm(r.text) for r in Transcriber(model_dir).transcribe_iter([u.path for u in utts])]
    out = {"offline": rates(offline)}
    print(f"accuracy on {len(utts)} test utterances: offline WER {out['offline']['wer']:.1%} CER {out['offline']['cer']:.1%}")
    for name, cfg in settings.items():
        rec, hyps = StreamingRecognizer(model_dir, cfg), []
        for i, u in enumerate(utts):
            audio, results = load_audio(u.path), []
            rec.start(i)
            for k in range(0, len(audio), PIECE):
                results += rec.accept(i, audio[k:k + PIECE], end=k + PIECE >= len(audio))
            hyps.append(norm(" ".join(r.text for r in results if r.is_final and r.text)))
        out[name] = {**rates(hyps), "identical_to_offline": sum(h == o for h, o in zip(hyps, offline))}
        print(f"{name:>12}: WER {out[name]['wer']:.1%} CER {out[name]['cer']:.1%}, "
              f"{out[name]['identical_to_offline']}/{len(utts)} transcripts identical to offline")
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    if argv:
        raise SystemExit(f"python -m bench streaming takes no options (got {' '.join(argv)})")
    model_dir, which = _model_dir()
    print(f"model: {which} ({model_dir})")
    engine = Engine(model_dir, EngineOptions())
    decoder = CTCDecoder(engine.model.vocab)
    audio = _audio(20.0, seed=1)
    repeats = 3
    offline = _offline_seconds(engine, decoder, audio, repeats) / 20.0
    print(f"offline: {offline * 1000:.1f} ms compute per audio second (median of {repeats})")
    settings = {
        "default": StreamingConfig(),                                   # 8 s of left context
        "left 2 s": StreamingConfig(left_context_ms=2000),              # compute-bounded
        "low-latency": StreamingConfig(chunk_ms=320, right_context_ms=160, left_context_ms=2000),
    }
    rows = {}
    for name, cfg in settings.items():
        rec = StreamingRecognizer(model_dir, cfg)
        runs = [_stream_once(rec, audio, f"{name}{r}") for r in range(repeats)]
        compute = statistics.median(r[0] for r in runs) / 20.0
        partial = [x for r in runs for x in r[1]]
        final = [r[2] for r in runs]
        rows[name] = {
            "chunk_ms": cfg.chunk_frames * 20, "left_ms": cfg.left_frames * 20, "right_ms": cfg.right_frames * 20,
            "algorithmic_latency_ms": cfg.latency_ms,
            "compute_ms_per_audio_s": round(compute * 1000, 1), "vs_offline": round(compute / offline, 2),
            "partial_latency_ms_p50": round(_pct(partial, 50), 1), "partial_latency_ms_p95": round(_pct(partial, 95), 1),
            "final_latency_ms_p50": round(_pct(final, 50), 1), "final_latency_ms_p95": round(_pct(final, 95), 1),
        }
        r = rows[name]
        print(f"{name:>12}: chunk {r['chunk_ms']} / left {r['left_ms']} / right {r['right_ms']} ms "
              f"(latency {r['algorithmic_latency_ms']} ms): {r['compute_ms_per_audio_s']} ms/s = "
              f"{r['vs_offline']}x offline; partial p50/p95 {r['partial_latency_ms_p50']}/{r['partial_latency_ms_p95']} ms, "
              f"final p50/p95 {r['final_latency_ms_p50']}/{r['final_latency_ms_p95']} ms")

    # Concurrent streams, batched: compute time per wall-clock second of audio.
    concurrency = {}
    seconds = 10.0
    for n in (1, 4, 8, 16):
        rec = StreamingRecognizer(model_dir, StreamingConfig())
        streams = [_audio(seconds, seed=10 + i) for i in range(n)]
        for i in range(n):
            rec.start(i)
        t = time.perf_counter()
        for k in range(0, len(streams[0]), PIECE):
            end = k + PIECE >= len(streams[0])
            rec.accept_many([(i, a[k:k + PIECE], end) for i, a in enumerate(streams)])
        load = (time.perf_counter() - t) / seconds
        concurrency[n] = round(load, 3)
        print(f"{n:>3} concurrent streams: {load:.2f} s of compute per second of audio "
              f"({'sustainable' if load < 1 else 'NOT sustainable'} in real time)")
    sustained = max([n for n, load in concurrency.items() if load < 1.0], default=0)
    print(f"sustained real-time streams (of those tried): {sustained}")
    accuracy = None
    if default_model_dir() is not None and TEST.exists():  # needs `make default-model`'s corpus
        no_lookahead = StreamingConfig(chunk_ms=320, right_context_ms=0, left_context_ms=2000)
        accuracy = accuracy_vs_offline(model_dir, {**settings, "no look-ahead": no_lookahead})
    return {"accuracy": accuracy, "model": which, "offline_ms_per_audio_s": round(offline * 1000, 1), "streaming": rows,
            "concurrent_load": concurrency, "sustained_streams": sustained}
