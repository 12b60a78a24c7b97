"""Timing helpers shared by the benchmarks: interleaved rounds, the fp32 GEMM floor, test audio.

Everything that compares systems on this shared machine times them *interleaved*: round by round,
each system once per round, so load from other processes hits every system alike; results are
medians over rounds, and the GEMM floor is timed in the same rounds as the models.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

SAMPLE_RATE = 16000
GFLOP_PER_AUDIO_SECOND = 14.1  # wav2vec2 BASE forward, conv encoder + transformer
GEMM_SHAPE = (499, 768, 3072)   # the transformer's FFN product for 10 s of audio
GEMM_REPS = 10                  # products per timed call (about 23.5 GFLOP)


def best_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(systems: Mapping[str, Callable[[], object]], rounds: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per call of every system, ``rounds`` rounds of one call each (after one warm-up
    call each: allocations, first-run planning, shape compilation)."""
    return interleaved_wall_cpu(systems, rounds, warmup)[0]


def interleaved_wall_cpu(systems: Mapping[str, Callable[[], object]], rounds: int, warmup: bool = True,
                         alternate: bool = False) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU seconds per call of every system, as ``interleaved``; with
    ``alternate`` every other round runs the systems in reverse order, so none always follows
    the same one."""
    if warmup:
        for fn in systems.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in systems}
    cpu: dict[str, list[float]] = {name: [] for name in systems}
    for r in range(rounds):
        for name in (list(systems)[::-1] if alternate and r % 2 else list(systems)):
            w, c = time.perf_counter(), time.process_time()
            systems[name]()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
    return wall, cpu


def median(values) -> float:
    return statistics.median(values)


def cpu_session(path: Path, threads: int):
    """An ONNX Runtime CPU session as the product makes them (w2v_serve.sessions)."""
    from w2v_serve.sessions import CPU_ONLY, open_session

    return open_session(path, providers=CPU_ONLY, threads=threads)


def ort_gemm(tmp: Path, threads: int) -> tuple[Callable[[], object], float]:
    """An ONNX Runtime fp32 MatMul on ``threads`` threads: (call running GEMM_REPS products, FLOP
    per call). The floor: GFLOP_PER_AUDIO_SECOND at this rate."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = GEMM_SHAPE
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight])
    path = tmp / "gemm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    sess = cpu_session(path, threads)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)

    def run() -> None:
        for _ in range(GEMM_REPS):
            sess.run(None, {"x": x})

    return run, 2.0 * m * k * n * GEMM_REPS


def floor_from_gemm(gemm_times: list[float], gemm_flop: float) -> tuple[float, list[float]]:
    """(floor real-time factor at the median GEMM rate, GFLOP/s per round)."""
    rates = [gemm_flop / t / 1e9 for t in gemm_times]
    return GFLOP_PER_AUDIO_SECOND / statistics.median(rates), rates


def torch_gemm_rate() -> float:
    """torch's fp32 matrix product (square 2048) GFLOP/s, best of 5, for comparison."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / best_seconds(lambda: a @ b) / 1e9


def harmonic_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """[1, samples] harmonic bursts in noise (speech-like level and structure)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    x = x + 0.1 * rng.standard_normal(n)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)[None]
