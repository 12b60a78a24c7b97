"""The CPU engine against the field: BASE (95 M, random init, CTC head), 10 s of audio, 2 threads.

Part 1, model only, in one run, interleaved round by round (bench.timing): our exported
``model.onnx`` under each runtime and precision the engine offers (ONNX Runtime fp32 / int8,
OpenVINO fp32 / bf16 where the CPU has it / int8), transformers' plain ONNX export of
``Wav2Vec2ForCTC`` (``torch.onnx.export``, dynamo=False, input ``input_values`` only) under ONNX
Runtime and under OpenVINO (f32, and OpenVINO's defaults: bf16 on CPUs with AMX/AVX512_BF16),
transformers eager, and the fp32 GEMM floor (14.1 GFLOP per audio second at ONNX Runtime's MatMul
rate) timed in the same rounds. Real-time factors are medians over rounds; ratios are over the floor.

Part 2, the whole job: ``w2v transcribe`` (a fresh process, every default: bundled model, runtime
and precision auto, its decoder) on 10 minutes of espeak-ng speech in one file, against the
model-only time of the same model under OpenVINO's defaults over the same audio (back-to-back
30 s pieces, no overlap, no decoding, no start-up), and the parts of the job measured apart:
process start-up to a loaded model, audio load, window overlap, decoding.

    python -m bench engine            # the full run (about 10 minutes)
    python -m bench engine --quick    # development: 3 rounds, 2 minutes of audio for part 2
    python -m bench engine --profile  # where ONNX Runtime fp32's time goes, by op type (the fp32 gap)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from bench.timing import (GFLOP_PER_AUDIO_SECOND, SAMPLE_RATE, floor_from_gemm, harmonic_audio,
                          interleaved, median, ort_gemm)

THREADS = 2
AUDIO_SECONDS = 10.0
ROUNDS = 7
JOB_SECONDS = 600.0
VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|") + tuple("ETAONIHSRDLUMWCFGYPBVKJXQZ'")
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- models
def export_ours(out: Path) -> Path:
    """BASE, random init (seed 0), exported with the int8 variant; returns the model directory."""
    import torch

    from export.exporter import export_model
    from training.checkpoint import Checkpoint
    from training.model import wav2vec2_base
    from w2v_serve.vocab import Vocabulary

    if (out / "model_card.json").exists():
        return out
    torch.manual_seed(0)
    model = wav2vec2_base(vocab_size=len(VOCAB)).eval()
    return export_model(Checkpoint.from_model(model, Vocabulary(VOCAB)), out, int8=True, check=False)


def transformers_model():
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(0)
    return Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(VOCAB))).eval()


def export_transformers(model, path: Path) -> Path:
    """transformers' model as its users export it: input_values -> logits, opset 17, legacy exporter."""
    import torch

    if path.exists():
        return path
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 16000),), str(path), input_names=["input_values"],
                          output_names=["logits"], dynamic_axes={"input_values": {0: "batch", 1: "samples"},
                                                                 "logits": {0: "batch", 1: "frames"}},
                          opset_version=17, do_constant_folding=True, dynamo=False)
    return path


def ov_plain(path: Path, hint: Optional[str]):
    """OpenVINO on a graph as a user would compile it: latency hint, THREADS threads, and the
    given inference precision (None: the plugin's default)."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": THREADS}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    return request, compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


# ---------------------------------------------------------------------------- part 1
def model_only(tmp: Path, rounds: int, cache: Optional[Path]) -> dict:
    import torch

    from w2v_serve.engine import Engine, EngineOptions
    from w2v_serve.sessions import CPU_ONLY, openvino_available, openvino_supports_bf16

    torch.set_num_threads(THREADS)
    where = cache or tmp
    start = time.perf_counter()
    ours_dir = export_ours(where / "base")
    reference = transformers_model()
    hf_path = export_transformers(reference, where / "transformers_base.onnx")
    export_s = time.perf_counter() - start
    audio = harmonic_audio(AUDIO_SECONDS)
    audio_t = torch.from_numpy(audio)
    gemm, gemm_flop = ort_gemm(tmp, THREADS)

    systems: dict[str, Callable[[], object]] = {"gemm": gemm}
    notes: dict[str, str] = {}
    load_s: dict[str, float] = {}

    def engine(name: str, runtime: str, precision: str) -> None:
        t = time.perf_counter()
        eng = Engine(ours_dir, EngineOptions(runtime=runtime, variant=precision, threads=THREADS, providers=CPU_ONLY))
        load_s[name] = round(time.perf_counter() - t, 2)
        systems[name] = lambda: eng.infer([audio[0]])

    engine("ours_onnxruntime_fp32", "onnxruntime", "fp32")
    engine("ours_onnxruntime_int8", "onnxruntime", "int8")
    from w2v_serve.sessions import open_session

    hf_ort = open_session(hf_path, providers=CPU_ONLY, threads=THREADS)
    systems["transformers_onnx_onnxruntime"] = lambda: hf_ort.run(None, {"input_values": audio})
    if openvino_available():
        engine("ours_openvino_fp32", "openvino", "fp32")
        if openvino_supports_bf16():
            engine("ours_openvino_bf16", "openvino", "bf16")
        else:
            notes["ours_openvino_bf16"] = "not run: this CPU has no native bf16 (OpenVINO capabilities lack BF16)"
        engine("ours_openvino_int8", "openvino", "int8")
        for name, hint in (("transformers_onnx_openvino_f32", "f32"), ("transformers_onnx_openvino_default", None)):
            request, precision = ov_plain(hf_path, hint)
            notes[name] = f"inference precision {precision}"
            systems[name] = (lambda r: lambda: r.infer({"input_values": audio}))(request)
    else:
        notes["openvino"] = "not installed: pip install 'w2v[openvino]'"
    systems["transformers_eager"] = lambda: reference(audio_t)

    with torch.inference_mode():
        times = interleaved(systems, rounds)
    floor, rates = floor_from_gemm(times.pop("gemm"), gemm_flop)
    rtf = {name: median(t) / AUDIO_SECONDS for name, t in times.items()}
    return {
        "config": {"model": "BASE (wav2vec2_base, random init, CTC head; transformers Wav2Vec2Config() default)",
                   "audio_seconds": AUDIO_SECONDS, "threads": THREADS, "rounds": rounds,
                   "transformers_export": "torch.onnx.export(dynamo=False, opset 17), input_values only"},
        "rtf": {k: round(v, 4) for k, v in rtf.items()},
        "over_floor": {k: round(v / floor, 3) for k, v in rtf.items()},
        "floor_rtf": round(floor, 4),
        "gemm_gflops_median": round(median(rates), 1),
        "load_seconds": load_s,
        "notes": notes,
        "export_seconds": round(export_s, 1),
    }


def conv_gflop(conv_layers, samples: int) -> float:
    """FLOP (multiply-adds x 2) of the conv feature encoder over ``samples`` of audio."""
    total, length, channels = 0.0, samples, 1
    for out_channels, kernel, stride in conv_layers:
        length = (length - kernel) // stride + 1
        total += 2.0 * length * out_channels * channels * kernel
        channels = out_channels
    return total / 1e9


def op_profile(tmp: Path, rounds: int, cache: Optional[Path]) -> dict:
    """ONNX Runtime's own profiler on our BASE fp32 graph (2 threads, 10 s): kernel time by op
    type, and the achieved GFLOP/s of Conv (the feature encoder) and MatMul (the Transformer)
    against the fp32 GEMM floor's rate timed in the same rounds. This says whether the gap to the
    floor is in ops outside the products (graph work) or in the products themselves (kernels)."""
    import collections

    import onnxruntime as ort

    from training.model import wav2vec2_base
    from w2v_serve.sessions import ort_session_options

    where = cache or tmp
    ours_dir = export_ours(where / "base")
    audio = harmonic_audio(AUDIO_SECONDS)
    so = ort_session_options(THREADS)   # the product's settings, plus the profiler
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / "ort_profile")
    session = ort.InferenceSession(str(ours_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    feed = {"audio": audio, "lengths": np.array([audio.shape[1]], dtype=np.int64)}
    gemm, gemm_flop = ort_gemm(tmp, THREADS)
    times = interleaved({"gemm": gemm, "ours": lambda: session.run(None, feed)}, rounds)
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    kernel_us = sum(by_op.values())
    wall = median(times["ours"])
    _, rates = floor_from_gemm(times["gemm"], gemm_flop)
    conv = conv_gflop(wav2vec2_base().config.conv_layers, audio.shape[1])
    total = GFLOP_PER_AUDIO_SECOND * AUDIO_SECONDS
    share = {op: us / kernel_us for op, us in by_op.most_common()}
    achieved = {op: round(flop / (share.get(op, 0) * wall) if share.get(op) else 0.0, 1)
                for op, flop in (("Conv", conv), ("MatMul", total - conv))}
    return {
        "model_seconds": round(wall, 4),
        "kernel_share": {op: round(v, 4) for op, v in share.items() if v >= 0.001},
        "outside_products_share": round(1.0 - share.get("Conv", 0) - share.get("MatMul", 0), 4),
        "gflop": {"Conv": round(conv, 1), "MatMul": round(total - conv, 1)},
        "achieved_gflops": achieved,
        "gemm_floor_gflops": round(median(rates), 1),
        "note": "kernel time is summed over every profiled run (warm-up included) and spread over "
                "the median wall time by share; ORT's profiler adds a little overhead to each op",
    }


# ---------------------------------------------------------------------------- part 2
def speech_file(path: Path, seconds: float) -> Path:
    """About ``seconds`` of espeak-ng speech (sentences in several voices, short pauses) in one WAV."""
    import soundfile as sf

    from w2v_serve.audio import load_audio
    from w2v_serve.precision import ESPEAK_SENTENCES, ESPEAK_VOICES

    if path.exists():
        return path
    parts, total, i = [], 0, 0
    pause = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict[tuple[int, int], np.ndarray] = {}
        while total < seconds * SAMPLE_RATE:
            key = (i % len(ESPEAK_SENTENCES), (i // len(ESPEAK_SENTENCES)) % len(ESPEAK_VOICES))
            if key not in cache:
                wav = Path(tmp) / "u.wav"
                subprocess.run(["espeak-ng", "-v", ESPEAK_VOICES[key[1]], "-w", str(wav), ESPEAK_SENTENCES[key[0]]],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                cache[key] = load_audio(wav)
            parts += [cache[key], pause]
            total += len(cache[key]) + len(pause)
            i += 1
    audio = np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    return path


def whole_job(tmp: Path, seconds: float, cache: Optional[Path], rounds: int) -> dict:
    """``w2v transcribe`` (fresh process, every default) vs OpenVINO model-only on the same audio,
    ``rounds`` rounds, the two interleaved; then the job's parts measured apart."""
    import soundfile as sf

    from w2v_serve.audio import load_audio
    from w2v_serve.decoding import options_for_model
    from w2v_serve.engine import Engine, EngineOptions
    from w2v_serve.model_dir import default_model_dir
    from w2v_serve.sessions import openvino_available
    from w2v_serve.transcribe import Transcriber

    model_dir = default_model_dir()
    wav = speech_file((cache or tmp) / f"speech_{int(seconds)}s.wav", seconds)
    env = dict(os.environ, W2V_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "w2v_serve.cli", "transcribe", str(wav)]
    audio = load_audio(wav)
    piece = 30 * SAMPLE_RATE
    pieces = [audio[k:k + piece] for k in range(0, len(audio), piece) if len(audio[k:k + piece]) >= 400]
    feeds = [{"audio": p[None], "lengths": np.array([len(p)], np.int64)} for p in pieces]
    baseline_note = ""
    if openvino_available():
        # OpenVINO as it comes: the plugin's default precision (bf16 on AMX/AVX512_BF16 CPUs) —
        # unless its output is NaN (bf16 on an AMX Xeon gave all-NaN for the bundled model): a
        # baseline that computes nothing usable is no baseline, so then f32.
        request, precision = ov_plain(model_dir / "model.onnx", None)
        if any(np.isnan(v).any() for v in request.infer(feeds[0]).values()):
            baseline_note = (f"OpenVINO's default inference precision ({precision}) gives NaN output for this model "
                             f"on this CPU; the baseline is OpenVINO f32 instead")
            request, precision = ov_plain(model_dir / "model.onnx", "f32")
        run, baseline = request.infer, f"OpenVINO, plugin defaults (inference precision {precision})"
    else:
        from w2v_serve.sessions import CPU_ONLY, open_session

        session = open_session(model_dir / "model.onnx", providers=CPU_ONLY, threads=THREADS)
        run, baseline = (lambda f: session.run(None, f)), "ONNX Runtime fp32 (OpenVINO is not installed)"
    run(feeds[0])                                                       # warm-up

    def model_only() -> float:
        start = time.perf_counter()
        for f in feeds:
            run(f)
        return time.perf_counter() - start

    def job() -> tuple[float, str]:
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        return time.perf_counter() - start, proc.stdout

    jobs, models = [], []
    for _ in range(rounds):
        seconds_, text = job()
        jobs.append(seconds_)
        models.append(model_only())

    start = time.perf_counter()
    subprocess.run(cmd + ["--decoder", "greedy"], capture_output=True, text=True, env=env, check=True)
    greedy_s = time.perf_counter() - start

    # The parts, apart: start-up (the command on 1 s of audio), audio load, the engine's windows,
    # decoding in the job's segments.
    short = tmp / "one_second.wav"
    sf.write(str(short), audio[:SAMPLE_RATE], SAMPLE_RATE, subtype="PCM_16")
    start = time.perf_counter()
    subprocess.run(cmd[:-1] + [str(short)], capture_output=True, text=True, env=env, check=True)
    startup_s = time.perf_counter() - start
    start = time.perf_counter()
    load_audio(wav)
    load_s = time.perf_counter() - start
    default_engine = Engine(model_dir, EngineOptions(threads=THREADS))
    start = time.perf_counter()
    log_probs = default_engine.log_probs(audio)
    windows_s = time.perf_counter() - start
    transcriber = Transcriber(engine=default_engine, decoder=options_for_model(model_dir))
    start = time.perf_counter()
    transcriber.decode_stream([(0, log_probs)])
    decode_s = time.perf_counter() - start
    job_s, model_s = statistics.median(jobs), statistics.median(models)   # medians: a noisy machine
    return {
        "audio_seconds": round(len(audio) / SAMPLE_RATE, 1),
        "command": f"w2v transcribe {wav.name}  (every default; W2V_NO_PROGRESS=1)",
        "rounds": rounds,
        "whole_job_seconds": round(job_s, 2),
        "whole_job_seconds_all": [round(x, 2) for x in jobs],
        "model_only_seconds": round(model_s, 2),
        "model_only_seconds_all": [round(x, 2) for x in models],
        "model_only": f"{baseline} on the bundled model's model.onnx, back-to-back 30 s pieces, "
                      f"{THREADS} threads, no decoding, model loaded",
        "whole_job_over_model_only": round(job_s / model_s, 3),
        **({"baseline_note": baseline_note} if baseline_note else {}),
        "whole_job_greedy_seconds": round(greedy_s, 2),
        "whole_job_greedy_over_model_only": round(greedy_s / model_s, 3),
        "parts_seconds": {
            "startup_and_1s_file": round(startup_s, 2),
            "audio_load": round(load_s, 2),
            "engine_windows_default": round(windows_s, 2),
            "decode_default_segments": round(decode_s, 2),
        },
        "engine_default": {"runtime": default_engine.runtime, "precision": default_engine.precision,
                           "window_s": default_engine.window / SAMPLE_RATE,
                           "context_s": default_engine.context / SAMPLE_RATE,
                           "overlap_factor": round(default_engine.window / default_engine.hop, 3),
                           "windows_per_run": max(1, min(default_engine.options.batch_size,
                                                         default_engine.max_batch_samples // default_engine.window))},
        "decoder": options_for_model(model_dir).method,
        "decode_workers": (os.cpu_count() or 1) if options_for_model(model_dir).method == "beam" else 0,
        "transcript_words": len(text.split()),
    }


# ---------------------------------------------------------------------------- entry
def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench engine")
    parser.add_argument("--quick", action="store_true", help="3 rounds; 120 s of audio for the whole job")
    parser.add_argument("--cache", metavar="DIR", help="keep exports and audio here between runs (development)")
    parser.add_argument("--skip-job", action="store_true", help="model-only part only")
    parser.add_argument("--skip-models", action="store_true", help="whole-job part only")
    parser.add_argument("--profile", action="store_true",
                        help="only: ONNX Runtime fp32's kernel time by op type against the GEMM floor")
    args = parser.parse_args(argv or [])
    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    result: dict = {"quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.profile:
            result["profile"] = op_profile(tmp, 3 if args.quick else ROUNDS, cache)
        elif not args.skip_models:
            result["model_only"] = model_only(tmp, 3 if args.quick else ROUNDS, cache)
        if not args.skip_job and not args.profile:
            result["whole_job"] = whole_job(tmp, 120.0 if args.quick else JOB_SECONDS, cache, 1 if args.quick else 3)
    result["load_average"] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]}
    result["versions"] = _versions()
    _print(result)
    return result


def _versions() -> dict:
    out = {}
    for name in ("onnxruntime", "openvino", "torch", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def _print(result: dict) -> None:
    m = result.get("model_only")
    if m:
        print(f"BASE, {AUDIO_SECONDS:.0f} s audio, {THREADS} threads, median of {m['config']['rounds']} interleaved rounds; "
              f"floor RTF {m['floor_rtf']} ({m['gemm_gflops_median']} GFLOP/s)")
        for name, value in m["rtf"].items():
            print(f"  {name:38s} RTF {value:.4f}  {m['over_floor'][name]:.2f}x floor  {m['notes'].get(name, '')}")
        for name, note in m["notes"].items():
            if name not in m["rtf"]:
                print(f"  {name:38s} {note}")
    p = result.get("profile")
    if p:
        print(f"ONNX Runtime fp32, ours, BASE {AUDIO_SECONDS:.0f} s, {THREADS} threads: {p['model_seconds']} s; "
              f"GEMM floor rate {p['gemm_floor_gflops']} GFLOP/s")
        for op, v in p["kernel_share"].items():
            rate = p["achieved_gflops"].get(op)
            print(f"  {op:24s} {100 * v:5.1f}% of kernel time" + (f", {p['gflop'][op]} GFLOP at {rate} GFLOP/s" if rate else ""))
        print(f"  outside Conv and MatMul: {100 * p['outside_products_share']:.1f}%")
    j = result.get("whole_job")
    if j:
        print(f"whole job: {j['command']} ({j['audio_seconds']} s): {j['whole_job_seconds']} s; model only "
              f"{j['model_only_seconds']} s -> {j['whole_job_over_model_only']}x")
        print(f"  with --decoder greedy: {j['whole_job_greedy_seconds']} s -> {j['whole_job_greedy_over_model_only']}x")
        print(f"  parts: {json.dumps(j['parts_seconds'])}; engine {json.dumps(j['engine_default'])}")
        if j.get("baseline_note"):
            print(f"  note: {j['baseline_note']}")
    print(f"  load average before/after: {result['load_average']}")


if __name__ == "__main__":
    main(sys.argv[1:])
