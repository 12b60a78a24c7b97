"""Exported model speed on CPU: BASE (95 M, random init, CTC head), 10 s of audio, 2 threads.

In one run, interleaved round by round so that load from other processes hits every system
alike: ONNX Runtime on the exported fp32 and int8 graphs, our PyTorch model (eager), and
transformers' Wav2Vec2ForCTC (eager), each as real-time factor (seconds of compute per second
of audio, median over rounds). The floor is 14.1 GFLOP per audio second at the fp32 GEMM rate
of ONNX Runtime's MatMul (the transformer's FFN shape), timed in every round beside the models;
torch's square GEMM rate is reported for comparison (ONNX Runtime's MLAS is the faster here).

    python -m bench export
"""

from __future__ import annotations

from typing import Optional

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench.timing import (GEMM_SHAPE, GFLOP_PER_AUDIO_SECOND, cpu_session, floor_from_gemm,
                          harmonic_audio, interleaved, ort_gemm, torch_gemm_rate)

THREADS = 2
AUDIO_SECONDS = 10.0
ROUNDS = 7
VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|") + tuple("ETAONIHSRDLUMWCFGYPBVKJXQZ'")


def _session(path: Path):
    return cpu_session(path, THREADS)


def main(argv: Optional[list[str]] = None) -> dict:
    if argv:
        raise SystemExit(f"python -m bench export takes no options (got {' '.join(argv)})")
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from export.exporter import export_model
    from training.checkpoint import Checkpoint
    from training.model import wav2vec2_base
    from w2v_serve.model_dir import ModelDirectory
    from w2v_serve.vocab import Vocabulary

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    ours = wav2vec2_base(vocab_size=len(VOCAB)).eval()
    reference = Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(VOCAB))).eval()
    audio = harmonic_audio(AUDIO_SECONDS)
    lengths = np.array([audio.shape[1]], dtype=np.int64)
    audio_t, lengths_t = torch.from_numpy(audio), torch.from_numpy(lengths)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        model_dir = ModelDirectory.load(export_model(Checkpoint.from_model(ours, Vocabulary(VOCAB)),
                                                     tmp / "base", int8=True, check=True))
        export_seconds = time.perf_counter() - start
        fp32 = _session(model_dir.graph_path("model", "fp32"))
        int8 = _session(model_dir.graph_path("model", "int8"))
        feed = {"audio": audio, "lengths": lengths}
        gemm, gemm_flop = ort_gemm(tmp, THREADS)
        systems: dict[str, Callable[[], object]] = {
            "gemm": gemm,  # timed every round too, so the floor sees the same load as the models
            "onnxruntime_fp32": lambda: fp32.run(None, feed),
            "onnxruntime_int8": lambda: int8.run(None, feed),
            "pytorch_eager_ours": lambda: ours(audio_t, lengths_t),
            "transformers_eager": lambda: reference(audio_t),
        }
        with torch.inference_mode():
            times = interleaved(systems, ROUNDS)
            torch_rate = torch_gemm_rate()
        card = model_dir.card

    floor, rates = floor_from_gemm(times.pop("gemm"), gemm_flop)
    rtf = {name: statistics.median(t) / AUDIO_SECONDS for name, t in times.items()}
    # Per round: the fp32 graph's time over that round's floor (both under the same load).
    paired = [t / (GFLOP_PER_AUDIO_SECOND * AUDIO_SECONDS / r) for t, r in zip(times["onnxruntime_fp32"], rates)]
    result = {
        "config": {"model": "BASE (wav2vec2_base, random init, CTC head)", "parameters": card.extra["parameters"],
                   "audio_seconds": AUDIO_SECONDS, "threads": THREADS, "rounds": ROUNDS},
        "rtf": {k: round(v, 4) for k, v in rtf.items()},
        "rtf_min": {name: round(min(t) / AUDIO_SECONDS, 4) for name, t in times.items()},
        "gemm_gflops": {"onnxruntime_median": round(statistics.median(rates), 1),
                        "onnxruntime_max": round(max(rates), 1), "torch_2048_best": round(torch_rate, 1),
                        "shape": "x".join(map(str, GEMM_SHAPE))},
        "floor_rtf": round(floor, 4),
        "ratios": {
            "fp32_over_floor": round(rtf["onnxruntime_fp32"] / floor, 3),
            "fp32_over_floor_same_round_median": round(statistics.median(paired), 3),
            "transformers_eager_over_fp32": round(rtf["transformers_eager"] / rtf["onnxruntime_fp32"], 3),
            "fp32_over_int8": round(rtf["onnxruntime_fp32"] / rtf["onnxruntime_int8"], 3),
            "transformers_eager_over_ours_eager": round(rtf["transformers_eager"] / rtf["pytorch_eager_ours"], 3),
        },
        "int8": {"conv_encoder": card.extra.get("int8_conv_encoder"),
                 "parity": {k: card.checks["parity"]["int8"][k] for k in ("max_rel_error", "argmax_agreement")}},
        "fp32_parity_max_rel_error": card.checks["parity"]["fp32"]["max_rel_error"],
        "export_seconds": round(export_seconds, 1),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "versions": card.versions,
    }
    _print(result)
    return result


def _print(result: dict) -> None:
    print(f"BASE, {AUDIO_SECONDS:.0f} s audio, {THREADS} threads, median of {ROUNDS} interleaved rounds")
    for name, value in result["rtf"].items():
        print(f"  {name:22s} RTF {value:.4f}")
    print(f"  fp32 GEMM {result['gemm_gflops']} GFLOP/s -> floor RTF {result['floor_rtf']:.4f}")
    for name, value in result["ratios"].items():
        print(f"  {name:36s} {value}")
    print(f"  load average before/after: {result['load_average']}")
