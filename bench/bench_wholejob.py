"""The whole `w2v transcribe` job on BASE weights against OpenVINO's model-only time on
transformers' own export of the same weights; and our exported graph against that export under
each runtime and precision.

Setup, all in one run: transformers' ``Wav2Vec2ForCTC`` with its default (BASE) configuration,
random init (seed 0), saved as a Hugging Face directory; ``w2v import hf`` and ``w2v export`` (with
their defaults, so the automatic precision check for this CPU runs at export) make our model
directory; ``torch.onnx.export`` (legacy exporter, opset 17, input ``input_values`` only) makes the
peer's graph. Speech: ``--seconds`` of espeak-ng sentences in several voices in one WAV.

1. Whole job: ``w2v transcribe FILE --model DIR`` in a fresh process with every default (greedy:
   the model ships no LM), and with beam search + an LM (``--lm``, the bundled model's KenLM),
   against OpenVINO with its own defaults (latency hint; its default inference precision: bf16
   on CPUs with AMX/AVX512_BF16) on the peer's graph over the same audio: back-to-back 30 s
   pieces, model compiled afresh each round and loaded (not timed), no decoding. Rounds
   interleaved; medians.
2. Graphs: ours (``model.onnx``; ``model.int8.onnx`` from ``w2v export --int8``) against the
   peer's (its int8: the same dynamic MatMul quantization, export.variants.write_int8) on 10 s
   of the speech, under ONNX Runtime fp32 and int8, OpenVINO f32 and bf16 (where the CPU has it),
   2 threads; wall time and process CPU time (the CPU time is the steadier figure on a loaded
   machine). Identical sessions of one graph differ by a few percent, stably (where the weights
   land in memory), so each side runs as several sessions (``--graph-sessions``) and its figure
   is the median of its sessions' medians; ``*_sessions_range`` is their spread around it.
   Rounds are interleaved, in reverse order every other round.
3. Attention's padding bias: one attention block (MatMul, Add of the [B, 1, 1, T] bias, Softmax,
   MatMul; 12 heads of 64, T = 499 frames: 10 s) against the same block without the Add, under
   ONNX Runtime fp32 with the product's session settings; the difference per block.
4. Opening our graph's session as ``w2v transcribe`` does here (OpenVINO bf16): without a cache,
   with OpenVINO's form of the graph (IR) not yet in the cache, and from it.

    python -m bench wholejob                     # 10 minutes of speech, 3 rounds; graphs: 5 sessions x 6 rounds
    python -m bench wholejob --seconds 60 --rounds 3 --graph-sessions 3
    python -m bench wholejob --skip-job          # the graph comparison only
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

from bench.bench_engine import VOCAB, export_transformers, ov_plain, speech_file
from bench.timing import SAMPLE_RATE, interleaved_wall_cpu

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
GRAPH_SECONDS = 10.0
PIECE_SECONDS = 30


# ---------------------------------------------------------------------------- models
def base_hf_dir(out: Path):
    """transformers' BASE Wav2Vec2ForCTC (random init, seed 0) saved with a character vocabulary
    and a feature extractor config; returns (model, directory)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(VOCAB))).eval()
    if not (out / "config.json").exists():
        model.save_pretrained(out)
        (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
        Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(out)
    return model, out


def w2v(*args: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "w2v_serve.cli", *args], capture_output=True, text=True,
                          env=env or _env(), check=True)


def _env() -> dict:
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, W2V_NO_PROGRESS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{path}" if path else str(ROOT))


def our_model(work: Path, hf_dir: Path) -> dict:
    """``w2v import hf`` then ``w2v export`` (defaults: the precision check runs), and a second
    export with ``--int8`` for the graph comparison; the seconds of each and the check's line."""
    ckpt, out, out_int8 = work / "base.ckpt", work / "model", work / "model_int8"
    info: dict = {}
    if not ckpt.exists():
        start = time.perf_counter()
        w2v("import", "hf", str(hf_dir), "--out", str(ckpt))
        info["import_seconds"] = round(time.perf_counter() - start, 1)
    if not (out / "model_card.json").exists():
        env = {k: v for k, v in _env().items() if k != "W2V_PRECISION_CHECK"}
        start = time.perf_counter()
        proc = w2v("export", str(ckpt), "--out", str(out), env=env)
        info["export_seconds"] = round(time.perf_counter() - start, 1)
        info["export_says"] = [line for line in proc.stderr.splitlines() if line.startswith("w2v:")]
    if not (out_int8 / "model_card.json").exists():
        w2v("export", str(ckpt), "--out", str(out_int8), "--int8", "--no-check", "--no-precision-check")
    from w2v_serve.engine import choose_runtime_and_precision, precision_record
    from w2v_serve.model_dir import ModelDirectory

    model = ModelDirectory.load(out)
    record = precision_record(model) or {}
    runtime, precision = choose_runtime_and_precision(model)
    checked = [(f"{rt}_{p}", r) for rt, res in record.get("results", {}).items() for p, r in res.items()
               if r.get("available")]
    info["auto"] = {"runtime": runtime, "precision": precision,
                    "check_seconds": record.get("seconds"), "check_trigger": record.get("trigger"),
                    "agreement": {k: r.get("agreement") for k, r in checked},
                    "agreement_all_frames": {k: r.get("agreement_all_frames") for k, r in checked},
                    "decided_frames": {k: f"{r.get('decided_frames')} of {r.get('frames')}" for k, r in checked},
                    "check_rtf": {k: r.get("rtf") for k, r in checked}}
    return {"dir": out, "dir_int8": out_int8, "info": info}


# ---------------------------------------------------------------------------- 1. whole job
def whole_job(model_dir: Path, peer: Path, wav: Path, lm: Optional[Path], rounds: int) -> dict:
    from w2v_serve.audio import load_audio

    audio = load_audio(wav)
    piece = PIECE_SECONDS * SAMPLE_RATE
    pieces = [audio[k:k + piece][None] for k in range(0, len(audio), piece) if len(audio[k:k + piece]) >= 400]
    precision: dict[str, str] = {}

    def model_only() -> float:
        # A model compiled afresh each round (compiling and one warm-up piece not timed), as each
        # round of the job is a fresh process: where a compiled model's weights land in memory
        # moves its speed by a few percent, for the whole life of the compiled model.
        request, precision["openvino"] = ov_plain(peer, None)
        request.infer({"input_values": pieces[0]})
        start = time.perf_counter()
        for p in pieces:
            request.infer({"input_values": p})
        return time.perf_counter() - start

    base = ["transcribe", str(wav), "--model", str(model_dir), "--format", "jsonl"]
    jobs: dict[str, list[str]] = {"greedy": base}
    if lm is not None:
        jobs["beam_lm"] = base + ["--lm", str(lm)]
    times: dict[str, list[float]] = {name: [] for name in [*jobs, "model_only"]}
    words: dict[str, int] = {}
    for _ in range(rounds):
        for name, args in jobs.items():
            start = time.perf_counter()
            proc = w2v(*args)
            times[name].append(time.perf_counter() - start)
            words[name] = len(json.loads(proc.stdout.splitlines()[0]).get("words", []))
        times["model_only"].append(model_only())
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "audio_seconds": round(len(audio) / SAMPLE_RATE, 1),
        "model_only_seconds": round(med["model_only"], 2),
        "model_only": f"OpenVINO defaults (inference precision {precision['openvino']}) on transformers' export, "
                      f"{PIECE_SECONDS} s pieces, {THREADS} threads, compiled afresh each round, model loaded, no decoding",
        "rounds_seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "transcript_words": words,
    }
    for name in jobs:
        out[f"{name}_seconds"] = round(med[name], 2)
        out[f"{name}_vs_model_only"] = round(med[name] / med["model_only"], 3)
    return out


# ---------------------------------------------------------------------------- 2. graphs
def graph_comparison(ours: Path, ours_int8: Path, peer: Path, work: Path, audio: np.ndarray, rounds: int,
                     sessions: int) -> dict:
    """Ours against the peer's graph under each runtime/precision. Each side runs as ``sessions``
    sessions (compiled models) of its own: identical sessions differ by a few percent, stably
    (where the weights land in memory), so one session per side measures that placement as much
    as the graph. Per session the median over ``rounds`` interleaved rounds; per side the median
    of its sessions' medians, and the spread of its sessions around it."""
    from export import variants
    from w2v_serve.sessions import CPU_ONLY, open_session, openvino_available, openvino_supports_bf16

    peer_int8 = work / "transformers_base.int8.onnx"
    if not peer_int8.exists():
        variants.write_int8(peer, peer_int8, ["MatMul"])
    x = audio[None]
    feeds = {"ours": {"audio": x, "lengths": np.array([x.shape[1]], np.int64)}, "peer": {"input_values": x}}

    def ort(path: Path, side: str) -> Callable:
        session = open_session(path, providers=CPU_ONLY, threads=THREADS)
        return lambda: session.run(None, feeds[side])

    def openvino(hint: str) -> Callable[[Path, str], Callable]:
        def make(path: Path, side: str) -> Callable:
            request, _ = ov_plain(path, hint)
            return lambda: request.infer(feeds[side])
        return make

    cases: dict[str, tuple[Callable, dict]] = {"onnxruntime_fp32": (ort, {"ours": ours, "peer": peer}),
                                               "onnxruntime_int8": (ort, {"ours": ours_int8, "peer": peer_int8})}
    notes = {}
    if openvino_available():
        hints = ["f32"] + (["bf16"] if openvino_supports_bf16() else [])
        if "bf16" not in hints:
            notes["openvino_bf16"] = "not run: this CPU has no native bf16"
        for hint in hints:
            cases[f"openvino_{hint}"] = (openvino(hint), {"ours": ours, "peer": peer})
    else:
        notes["openvino"] = "not installed"
    out: dict = {"audio_seconds": GRAPH_SECONDS, "threads": THREADS, "rounds": rounds, "sessions": sessions,
                 **({"notes": notes} if notes else {})}
    for name, (make, paths) in cases.items():       # one case at a time: its sessions, then freed
        systems = {f"{side}{i}": make(paths[side], side) for i in range(sessions) for side in ("ours", "peer")}
        wall, cpu = interleaved_wall_cpu(systems, rounds, alternate=True)
        del systems
        result: dict = {}
        for side in ("ours", "peer"):
            per_wall = [statistics.median(wall[f"{side}{i}"]) for i in range(sessions)]
            per_cpu = [statistics.median(cpu[f"{side}{i}"]) for i in range(sessions)]
            w, c = statistics.median(per_wall), statistics.median(per_cpu)
            result[f"{side}_seconds"] = round(w, 4)
            result[f"{side}_cpu_seconds"] = round(c, 4)
            result[f"{side}_sessions_range"] = [round(min(per_wall) / w, 3), round(max(per_wall) / w, 3)]
        result["ours_vs_peer"] = round(result["ours_seconds"] / result["peer_seconds"], 3)
        result["cpu_ours_vs_peer"] = round(result["ours_cpu_seconds"] / result["peer_cpu_seconds"], 3)
        out[name] = result
    return out


def session_open(model: Path, rounds: int = 3) -> dict:
    """Seconds to open our graph's session the way ``w2v transcribe`` does by default here
    (OpenVINO bf16, 2 threads): with no cache at all (``cache=False``: read the ONNX file,
    compile), with OpenVINO's form of the graph not cached yet (an empty cache each time: read the
    ONNX file, write the IR, compile) and cached (read the IR, compile); medians of ``rounds``,
    interleaved."""
    from w2v_serve.sessions import OpenVINOSession, open_session, openvino_available, openvino_supports_bf16

    if not (openvino_available() and openvino_supports_bf16()):
        return {"note": "not run: needs OpenVINO and a CPU with bf16"}
    times: dict[str, list[float]] = {"uncached": [], "cold": [], "warm": []}
    saved = os.environ.get("XDG_CACHE_HOME")
    try:
        with tempfile.TemporaryDirectory() as warm_cache:
            os.environ["XDG_CACHE_HOME"] = warm_cache
            open_session(model, runtime="openvino", threads=THREADS, precision="bf16")    # fills it
            for _ in range(rounds):
                start = time.perf_counter()
                OpenVINOSession(model, threads=THREADS, precision="bf16", cache=False)
                times["uncached"].append(time.perf_counter() - start)
                with tempfile.TemporaryDirectory() as cold_cache:
                    for kind, cache in (("cold", cold_cache), ("warm", warm_cache)):
                        os.environ["XDG_CACHE_HOME"] = cache
                        start = time.perf_counter()
                        open_session(model, runtime="openvino", threads=THREADS, precision="bf16")
                        times[kind].append(time.perf_counter() - start)
    finally:
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved
    return {"rounds": rounds, **{f"{kind}_seconds": round(statistics.median(v), 3) for kind, v in times.items()}}


def attention_bias_cost(rounds: int = 200) -> dict:
    """One attention block with and without the padding bias's Add under ONNX Runtime fp32 (the
    product's session settings, 2 threads): 12 heads of 64, T = 499 frames (10 s), batch 1."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from w2v_serve.sessions import ort_session_options

    heads, dim, frames = 12, 64, 499

    def block(with_bias: bool) -> ort.InferenceSession:
        shapes = {"q": ["b", heads, "t", dim], "kt": ["b", heads, dim, "t"], "v": ["b", heads, "t", dim],
                  "bias": ["b", 1, 1, "t"]}
        names = ["q", "kt", "v"] + (["bias"] if with_bias else [])
        scores = "s_biased" if with_bias else "s"
        nodes = [helper.make_node("MatMul", ["q", "kt"], ["s"])]
        nodes += [helper.make_node("Add", ["s", "bias"], ["s_biased"])] if with_bias else []
        nodes += [helper.make_node("Softmax", [scores], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["o"])]
        graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n])
                                                       for n in names],
                                  [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        return ort.InferenceSession(model.SerializeToString(), ort_session_options(THREADS),
                                    providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    feed = {"q": rng.standard_normal((1, heads, frames, dim), dtype=np.float32),
            "kt": rng.standard_normal((1, heads, dim, frames), dtype=np.float32),
            "v": rng.standard_normal((1, heads, frames, dim), dtype=np.float32),
            "bias": np.zeros((1, 1, 1, frames), np.float32)}
    with_bias, without = block(True), block(False)
    wall, _ = interleaved_wall_cpu({"with": lambda: with_bias.run(None, feed),
                                    "without": lambda: without.run(None, {k: feed[k] for k in ("q", "kt", "v")})},
                                   rounds, alternate=True)
    w, wo = statistics.median(wall["with"]), statistics.median(wall["without"])
    return {"frames": frames, "heads": heads, "rounds": rounds, "with_bias_ms": round(w * 1e3, 3),
            "without_bias_ms": round(wo * 1e3, 3), "bias_ms_per_block": round((w - wo) * 1e3, 3)}


def graph_structure(ours: Path, peer: Path) -> dict:
    """Node counts by op type of both graphs (the op types where they differ)."""
    import collections

    import onnx

    counts = {}
    for name, path in (("ours", ours), ("peer", peer)):
        graph = onnx.load(str(path), load_external_data=False).graph
        counts[name] = collections.Counter(n.op_type for n in graph.node)
    ops = sorted(set(counts["ours"]) | set(counts["peer"]))
    return {"nodes": {k: sum(v.values()) for k, v in counts.items()},
            "differing_ops": {op: [counts["ours"][op], counts["peer"][op]] for op in ops
                              if counts["ours"][op] != counts["peer"][op]}}


# ---------------------------------------------------------------------------- entry
def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench wholejob")
    parser.add_argument("--seconds", type=float, default=600.0, help="seconds of speech for the whole job (default 600)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the whole job (default 3)")
    parser.add_argument("--graph-rounds", type=int, default=6,
                        help="interleaved rounds of the graph comparison (default 6)")
    parser.add_argument("--graph-sessions", type=int, default=5,
                        help="sessions of each graph per runtime/precision in the comparison (default 5)")
    parser.add_argument("--cache", metavar="DIR", help="keep models and audio here between runs (development)")
    parser.add_argument("--skip-job", action="store_true", help="graph comparison only")
    parser.add_argument("--skip-graphs", action="store_true", help="whole job only")
    args = parser.parse_args(argv or [])
    load_before = os.getloadavg()
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        work = Path(args.cache) if args.cache else Path(tmp_name)
        work.mkdir(parents=True, exist_ok=True)
        hf_model, hf_dir = base_hf_dir(work / "hf_base")
        peer = export_transformers(hf_model, work / "transformers_base.onnx")
        ours = our_model(work, hf_dir)
        result["setup"] = ours["info"]
        from w2v_serve.audio import load_audio
        from w2v_serve.model_dir import default_model_dir

        wav = speech_file(work / f"speech_{int(args.seconds)}s.wav", args.seconds)
        if not args.skip_graphs:
            audio = load_audio(wav)[: int(GRAPH_SECONDS * SAMPLE_RATE)]
            result["graph_structure"] = graph_structure(ours["dir"] / "model.onnx", peer)
            result["graphs"] = graph_comparison(ours["dir"] / "model.onnx", ours["dir_int8"] / "model.int8.onnx",
                                                peer, work, audio, args.graph_rounds, args.graph_sessions)
            result["attention_bias"] = attention_bias_cost()
            result["session_open"] = session_open(ours["dir"] / "model.onnx")
        if not args.skip_job:
            bundled = default_model_dir()
            lm = bundled / "lm.arpa" if bundled is not None and (bundled / "lm.arpa").exists() else None
            result["whole_job"] = whole_job(ours["dir"], peer, wav, lm, args.rounds)
    result["load_average"] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]}
    _print(result)
    return result


def _print(result: dict) -> None:
    s = result.get("setup", {})
    if "auto" in s:
        print(f"w2v export's automatic choice: {s['auto']['runtime']} {s['auto']['precision']} "
              f"(check {s['auto'].get('check_seconds')} s; agreement {s['auto'].get('agreement')})")
    g = result.get("graphs")
    if g:
        print(f"our graph vs transformers' export, {GRAPH_SECONDS:.0f} s, {THREADS} threads, {g['sessions']} sessions "
              f"each, medians of {g['rounds']} rounds:")
        for k, v in g.items():
            if isinstance(v, dict) and "ours_vs_peer" in v:
                print(f"  {k:18s} wall {v['ours_seconds']:.3f} / {v['peer_seconds']:.3f} s = {v['ours_vs_peer']:.3f}x   "
                      f"CPU {v['ours_cpu_seconds']:.3f} / {v['peer_cpu_seconds']:.3f} s = {v['cpu_ours_vs_peer']:.3f}x   "
                      f"(sessions: ours {v['ours_sessions_range']}, theirs {v['peer_sessions_range']} of the median)")
    o = result.get("session_open")
    if o and "cold_seconds" in o:
        print(f"opening our graph's OpenVINO bf16 session: {o['uncached_seconds']} s without a cache, "
              f"{o['cold_seconds']} s writing OpenVINO's form of it to the cache, {o['warm_seconds']} s from it")
    a = result.get("attention_bias")
    if a:
        print(f"attention block, {a['heads']} heads x {a['frames']} frames, ONNX Runtime fp32: {a['with_bias_ms']} ms with "
              f"the padding bias, {a['without_bias_ms']} ms without: {a['bias_ms_per_block']} ms per block")
    j = result.get("whole_job")
    if j:
        print(f"whole job, {j['audio_seconds']} s of speech; model only ({j['model_only']}): {j['model_only_seconds']} s")
        for name in ("greedy", "beam_lm"):
            if f"{name}_seconds" in j:
                print(f"  w2v transcribe {name:8s} {j[f'{name}_seconds']} s = {j[f'{name}_vs_model_only']}x model only")
    print(f"  load average before/after: {result['load_average']}")


if __name__ == "__main__":
    main(sys.argv[1:])
