"""GPU check, for a CUDA machine: what the CPU-only development machines cannot tell.

1. TensorRT takes every fp32 and fp16 graph (model, encoder, transformer) of an exported BASE
   model: parsed and built by the ``tensorrt`` wheel when it is installed (dynamic batch and
   length profile), and run by ONNX Runtime's TensorRT execution provider (``build`` per graph).
2. ONNX Runtime's CUDA and TensorRT providers give the CPU provider's log-probabilities on a
   padded batch (fp32: |diff| <= 1e-3 x max|ref|; argmax agreement >= 99.9%).
3. fp16 parity: the fp16 variant on CUDA and TensorRT against fp32 on CPU (argmax agreement
   >= 99%, max relative error reported).
4. BASE throughput at batch 16 x 10 s: CUDA fp32, CUDA fp16, TensorRT fp16 (audio seconds per
   second of compute).
5. One bf16 training step on the GPU (torch autocast bf16; BASE, CTC loss, AdamW): finite loss
   and gradients, step time.

On a machine without CUDA it skips with a message and returns ``{"skipped": reason}``.

    python -m bench gpu
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|") + tuple("ETAONIHSRDLUMWCFGYPBVKJXQZ'")
GRAPHS = ("model", "encoder", "transformer")
FP32_RTOL = 1e-3
FP32_AGREEMENT = 0.999
FP16_AGREEMENT = 0.99
THROUGHPUT_BATCH = 16
THROUGHPUT_SECONDS = 10.0


def cuda_status() -> tuple[bool, str]:
    """(usable, why not) for this machine: an onnxruntime build with CUDA and a visible GPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return False, (f"this onnxruntime build has no CUDA provider (has {providers}); on a CUDA machine "
                       "install onnxruntime-gpu (and tensorrt for the TensorRT checks)")
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device"
    except ImportError:
        pass
    return True, ""


def main(argv: Optional[list[str]] = None) -> dict:
    ok, why = cuda_status()
    if not ok:
        message = f"GPU check skipped: {why}"
        print(message)
        return {"skipped": message}
    import onnxruntime as ort

    result: dict = {"providers": ort.get_available_providers()}
    with tempfile.TemporaryDirectory() as tmp_name:
        model_dir = _export(Path(tmp_name) / "base")
        result["tensorrt_build"] = tensorrt_builds(model_dir)
        result["parity"] = parity(model_dir)
        result["throughput"] = throughput(model_dir)
    result["bf16_training_step"] = bf16_training_step()
    result["ok"] = _all_ok(result)
    _print(result)
    return result


# ---------------------------------------------------------------------------- pieces
def _export(out: Path) -> Path:
    import torch

    from export.exporter import export_model
    from training.checkpoint import Checkpoint
    from training.model import wav2vec2_base
    from w2v_serve.vocab import Vocabulary

    torch.manual_seed(0)
    model = wav2vec2_base(vocab_size=len(VOCAB)).eval()
    return export_model(Checkpoint.from_model(model, Vocabulary(VOCAB)), out, fp16=True, check=True)


def _graph_files(model_dir: Path) -> dict[tuple[str, str], Path]:
    from w2v_serve.model_dir import ModelDirectory

    model = ModelDirectory.load(model_dir)
    return {(g, v): model.graph_path(g, v) for v in ("fp32", "fp16") for g in GRAPHS}


def _feeds(graph: str, batch: int = 2, seconds: float = 4.0, hidden: int = 512) -> dict:
    rng = np.random.default_rng(0)
    samples = int(seconds * 16000)
    lengths = np.array([samples - 3200 * i for i in range(batch)], np.int64)
    if graph == "transformer":
        frames = (samples - 400) // 320 + 1
        return {"features": rng.standard_normal((batch, frames, hidden)).astype(np.float32) * 0.1,
                "feature_lengths": (lengths - 400) // 320 + 1}
    audio = (rng.standard_normal((batch, samples)) * 0.1).astype(np.float32)
    for row, n in zip(audio, lengths):
        row[n:] = 0
    return {"audio": audio, "lengths": lengths}


def _session(path: Path, provider: str, fp16: bool = False):
    from w2v_serve.sessions import open_session

    return open_session(path, runtime="onnxruntime", providers=(provider, "CPUExecutionProvider"), fp16=fp16)


def tensorrt_builds(model_dir: Path) -> dict:
    """Per graph file: the tensorrt wheel's parse + build (when installed), and an ORT TensorRT EP run."""
    out: dict = {}
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
    import onnxruntime as ort

    has_trt_ep = "TensorrtExecutionProvider" in ort.get_available_providers()
    for (graph, variant), path in _graph_files(model_dir).items():
        row: dict = {}
        if trt is not None:
            row["tensorrt_wheel"] = _trt_build(trt, path, graph, fp16=variant == "fp16")
        if has_trt_ep:
            try:
                start = time.perf_counter()
                sess = _session(path, "TensorrtExecutionProvider", fp16=variant == "fp16")
                sess.run(None, _feeds(graph))
                row["ort_tensorrt_ep"] = {"ok": sess.get_providers()[0] == "TensorrtExecutionProvider",
                                          "providers": sess.get_providers(),
                                          "build_and_run_s": round(time.perf_counter() - start, 1)}
            except Exception as e:     # report, go on with the other graphs
                row["ort_tensorrt_ep"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        else:
            row["ort_tensorrt_ep"] = {"ok": None, "note": "onnxruntime has no TensorRT provider"}
        out[f"{path.name}"] = row
    return out


def _trt_build(trt, path: Path, graph: str, fp16: bool) -> dict:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    start = time.perf_counter()
    if not parser.parse(path.read_bytes()):
        return {"ok": False, "parse_errors": [str(parser.get_error(i)) for i in range(parser.num_errors)]}
    config = builder.create_builder_config()
    if fp16 and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name in ("audio",):
            shapes = ((1, 400), (4, 160000), (16, 480000))
        elif tensor.name == "features":
            shapes = ((1, 1, 512), (4, 499, 512), (16, 1499, 512))
        else:
            shapes = ((1,), (4,), (16,))
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    return {"ok": engine is not None, "build_s": round(time.perf_counter() - start, 1),
            "engine_mb": round(engine.nbytes / 2**20, 1) if engine is not None else None}


def _compare(got: np.ndarray, ref: np.ndarray) -> dict:
    got, ref = got.astype(np.float32), ref.astype(np.float32)
    return {"max_rel_error": float(np.abs(got - ref).max() / max(1e-12, np.abs(ref).max())),
            "argmax_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean())}


def parity(model_dir: Path) -> dict:
    import onnxruntime as ort

    files = _graph_files(model_dir)
    providers = [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in ort.get_available_providers()]
    out: dict = {}
    for graph in GRAPHS:
        feeds = _feeds(graph)
        reference = _session(files[(graph, "fp32")], "CPUExecutionProvider").run(None, feeds)[0]
        for provider in providers:
            for variant in ("fp32", "fp16"):
                got = _session(files[(graph, variant)], provider, fp16=variant == "fp16").run(None, feeds)[0]
                row = _compare(got, reference)
                if variant == "fp32":
                    row["ok"] = row["max_rel_error"] <= FP32_RTOL and row["argmax_agreement"] >= FP32_AGREEMENT
                else:
                    row["ok"] = row["argmax_agreement"] >= FP16_AGREEMENT
                out[f"{graph}/{variant}/{provider}"] = row
    return out


def throughput(model_dir: Path) -> dict:
    import onnxruntime as ort

    files = _graph_files(model_dir)
    feeds = _feeds("model", batch=THROUGHPUT_BATCH, seconds=THROUGHPUT_SECONDS)
    feeds["lengths"][:] = feeds["audio"].shape[1]
    audio_s = THROUGHPUT_BATCH * THROUGHPUT_SECONDS
    out = {}
    cases = [("CUDAExecutionProvider", "fp32"), ("CUDAExecutionProvider", "fp16")]
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        cases += [("TensorrtExecutionProvider", "fp32"), ("TensorrtExecutionProvider", "fp16")]
    for provider, variant in cases:
        sess = _session(files[("model", variant)], provider, fp16=variant == "fp16")
        sess.run(None, feeds)                                  # warm-up (TensorRT: the engine build)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - start)
        best = min(times)
        out[f"{provider}/{variant}"] = {"batch": THROUGHPUT_BATCH, "seconds_per_row": THROUGHPUT_SECONDS,
                                        "run_s": round(best, 4), "audio_seconds_per_second": round(audio_s / best, 1)}
    return out


def bf16_training_step() -> dict:
    """One fine-tuning step of BASE under bf16 autocast on the GPU: CTC loss on random labels."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {"ok": None, "note": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"ok": None, "note": "torch sees no CUDA device"}
    if not torch.cuda.is_bf16_supported():
        return {"ok": None, "note": "this GPU has no bf16"}
    from training.model import wav2vec2_base

    torch.manual_seed(0)
    device = torch.device("cuda")
    model = wav2vec2_base(vocab_size=len(VOCAB)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    audio = torch.randn(4, 64000, device=device) * 0.1
    lengths = torch.tensor([64000, 60000, 56000, 48000], device=device)
    targets = torch.randint(5, len(VOCAB), (4, 30), device=device)
    target_lengths = torch.tensor([30, 28, 25, 20], device=device)
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, frames = model(audio, lengths)
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        loss = F.ctc_loss(log_probs, targets, frames, target_lengths, blank=0, zero_infinity=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads_finite = all(torch.isfinite(p.grad).all().item() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"ok": bool(torch.isfinite(loss).item() and grads_finite), "loss": round(float(loss), 4),
            "step_s": round(min(times), 3), "gpu": torch.cuda.get_device_name(0)}


def _all_ok(result: dict) -> bool:
    flags = []
    for row in result["tensorrt_build"].values():
        flags += [v.get("ok") for v in row.values() if isinstance(v, dict)]
    flags += [r["ok"] for r in result["parity"].values()]
    flags.append(result["bf16_training_step"].get("ok"))
    return all(f is not False for f in flags)


def _print(result: dict) -> None:
    print(f"providers: {result['providers']}")
    for name, row in result["tensorrt_build"].items():
        print(f"  TensorRT {name:28s} {row}")
    for name, row in result["parity"].items():
        print(f"  parity {name:45s} {'ok' if row['ok'] else 'FAIL'} rel {row['max_rel_error']:.2e} "
              f"agree {row['argmax_agreement']:.4f}")
    for name, row in result["throughput"].items():
        print(f"  throughput {name:36s} {row['audio_seconds_per_second']} audio s/s (batch {row['batch']})")
    print(f"  bf16 training step: {result['bf16_training_step']}")
    print(f"GPU check {'passed' if result['ok'] else 'FAILED'}")
