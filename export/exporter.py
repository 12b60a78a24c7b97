"""``w2v export``: a CTC checkpoint -> a model directory (see w2v_serve/model_dir.py).

    export_model("model.ckpt", "exported/", fp16=True, int8=True)

writes the fp32 graphs (full, encoder, transformer), the requested variants, vocab.json and
model_card.json. With ``check`` (the default) every graph passes the ONNX checker, the fp32
and fp16 graphs pass the TensorRT check, and every variant is compared with PyTorch on fresh
random audio; the numbers go into the card, and an fp32 graph that disagrees with PyTorch
fails the export. The directory is assembled in a temporary folder beside ``out_dir`` and
moved in at the end, card last, so a failed export never leaves a half-written model behind.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import onnx

from export.graphs import export_graph, inference_copy
from training.checkpoint import Checkpoint, CheckpointError, file_sha256, load_checkpoint
from training.model import Wav2Vec2Model
from w2v_serve.model_dir import (
    ENCODER_GRAPH, FULL_GRAPH, GRAPH_IO, PRECISION_CHECK_NAME, TRANSFORMER_GRAPH, VOCAB_NAME, ModelCard, write_card,
)

GRAPHS = (FULL_GRAPH, ENCODER_GRAPH, TRANSFORMER_GRAPH)
MIN_OPSET = 17
# An fp32 graph further than this from PyTorch (relative to the largest log-probability) is a bug.
FP32_MAX_REL_ERROR = 1e-4
# int8 quantizes the conv encoder too unless that costs more than this much argmax agreement
# over quantizing the transformer's matrix products alone.
INT8_CONV_AGREEMENT_COST = 0.01
# protobuf cannot serialize a model of 2 GiB or more; above this the weights go to external data.
EXTERNAL_DATA_THRESHOLD = 2 * 1024 ** 3 - 64 * 1024 ** 2
# The trial behind that choice: the parity batches plus two longer rows (~580 frames in all),
# so that a 1 % difference is more than a few frames of noise.
INT8_TRIAL_BATCHES = ((16000,), (24000, 9600), (6400, 32000, 13000), (48000, 40000))


class ExportError(RuntimeError):
    """An export that cannot be done or whose graphs fail the export-time checks."""


def graph_file(graph: str, variant: str) -> str:
    return f"{graph}.onnx" if variant == "fp32" else f"{graph}.{variant}.onnx"


# ---------------------------------------------------------------------------- checkpoint
def checked_checkpoint(checkpoint: str | Path | Checkpoint) -> tuple[Checkpoint, dict[str, Any]]:
    """Load (if a path) and validate a checkpoint for export; returns it and its source record."""
    if isinstance(checkpoint, Checkpoint):
        ckpt, source = checkpoint, {"checkpoint": None, "sha256": None}
        origin = "checkpoint"
    else:
        path = Path(checkpoint)
        ckpt = load_checkpoint(path)  # CheckpointError: missing, truncated, not a w2v checkpoint
        source = {"checkpoint": str(path), "sha256": file_sha256(path)}
        origin = str(path)
    if ckpt.kind != "ctc":
        raise CheckpointError(
            f"{origin}: is a {ckpt.kind} checkpoint without a CTC head; export needs a fine-tuned "
            f"(ctc) checkpoint: fine-tune it first (`w2v finetune`)"
        )
    head_outputs = ckpt.model_config.vocab_size
    if ckpt.vocab is None:
        raise CheckpointError(f"{origin}: has a CTC head with {head_outputs} outputs but no vocabulary")
    head = ckpt.model_state.get("ctc_head.weight")
    sizes = {"vocabulary": len(ckpt.vocab), "config vocab_size": head_outputs,
             "ctc_head.weight rows": None if head is None else int(head.shape[0])}
    if len({v for v in sizes.values() if v is not None}) != 1:
        raise CheckpointError(
            f"{origin}: vocabulary does not match the CTC head ("
            + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ")"
        )
    source.update(kind=ckpt.kind, meta=ckpt.meta)
    return ckpt, source


# ---------------------------------------------------------------------------- export
def export_model(checkpoint: str | Path | Checkpoint, out_dir: str | Path, *, fp16: bool = False,
                 int8: bool = False, check: bool = True, opset: int = MIN_OPSET,
                 external_data: Optional[bool] = None) -> Path:
    """Write a complete model directory for ``checkpoint`` to ``out_dir``; returns ``out_dir``.

    ``external_data``: store each graph's weights in ``<graph file>.data`` beside it (ONNX
    external data); None: only when the weights reach protobuf's 2 GB limit (XLS-R 1B/2B, MMS-1B).
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset >= {MIN_OPSET}")
    ckpt, source = checked_checkpoint(checkpoint)
    model = inference_copy(ckpt.build_model())
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out_dir)
    work = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out_dir)}{os.getpid()}-", dir=out_dir.parent))
    try:
        if external_data is None:
            external_data = _weight_bytes(model) >= EXTERNAL_DATA_THRESHOLD
        card = _build_directory(model, ckpt, source, work, fp16=fp16, int8=int8, check=check, opset=opset,
                                external_data=external_data)
        _move_into(work, out_dir, card)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _staging_prefix(out_dir: Path) -> str:
    """Staging directories are hidden siblings of the output named after the exporting process."""
    return f".{out_dir.name}.export-"


def _remove_stale_staging(out_dir: Path) -> None:
    """Staging directories of exports that were killed (their process no longer runs)."""
    from w2v_serve.process import pid_alive

    prefix = _staging_prefix(out_dir)
    for old in out_dir.parent.glob(prefix + "*"):
        try:
            pid = int(old.name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)


def _weight_bytes(model: Wav2Vec2Model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _build_directory(model: Wav2Vec2Model, ckpt: Checkpoint, source: dict[str, Any], work: Path, *,
                     fp16: bool, int8: bool, check: bool, opset: int, external_data: bool = False) -> ModelCard:
    from export import variants

    files = {g: graph_file(g, "fp32") for g in GRAPHS}
    for graph, name in files.items():
        export_graph(model, graph, work / name, opset, external_data=external_data)
    card = _new_card(model, ckpt, source, opset)
    card.variants["fp32"] = files
    if fp16:
        card.variants["fp16"] = {g: graph_file(g, "fp16") for g in GRAPHS}
        for g in GRAPHS:
            variants.write_fp16(work / files[g], work / card.variants["fp16"][g])
    if int8:
        card.variants["int8"] = _write_int8(model, work, files, card, check, opset)
    if external_data:
        moved = {n: move_to_external_data(work / n) for files_ in card.variants.values() for n in files_.values()}
        card.extra["external_data"] = {n: data.name for n, data in moved.items() if data is not None}
    ckpt.vocab.save(work / VOCAB_NAME)  # type: ignore[union-attr]
    _ship_language_model(ckpt, work, card)
    if check:
        _check_all(model, work, card)
    return card


def move_to_external_data(path: Path) -> Optional[Path]:
    """Rewrite the ONNX file ``path`` with all its weights over 1 KiB in one external data file
    ``<name>.data`` beside it (ONNX Runtime and OpenVINO read it from the graph's folder);
    returns the data file, or None when no weight is that large (the graph stays whole: an int8
    graph of a small model can be)."""
    data = path.with_name(path.name + ".data")
    model = onnx.load(str(path))   # external data, if any, is read in
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return data if data.exists() else None


def _ship_language_model(ckpt: Checkpoint, work: Path, card: ModelCard) -> None:
    """An imported ``Wav2Vec2ProcessorWithLM``'s language model (the checkpoint's
    ``meta["decoding"]``) goes into the directory as the project's models ship one: ``lm.arpa``
    or ``lm.bin`` with ``lm.unigrams.txt``, named with its alpha/beta in the card's ``decoding``."""
    lm = ckpt.meta.get("decoding")
    if not lm:
        return
    src = Path(lm["source_lm"])
    if not src.is_file():
        raise ExportError(f"{src}: the checkpoint's language model is missing (import it again)")
    name = "lm.arpa" if src.suffix == ".arpa" else "lm.bin"
    shutil.copyfile(src, work / name)
    decoding: dict[str, Any] = {"lm": name, "alpha": lm["alpha"], "beta": lm["beta"],
                                "unk_score_offset": lm["unk_score_offset"], "score_boundary": lm["score_boundary"],
                                "tuned_on": "imported with the checkpoint (Wav2Vec2ProcessorWithLM attrs.json)"}
    if lm.get("source_unigrams"):
        shutil.copyfile(lm["source_unigrams"], work / "lm.unigrams.txt")
        decoding["unigrams"] = "lm.unigrams.txt"
    elif name != "lm.arpa":
        raise ExportError(f"{src}: a binary KenLM file needs its unigrams.txt beside it")
    card.decoding = decoding


def _write_int8(model: Wav2Vec2Model, work: Path, fp32_files: dict[str, str], card: ModelCard,
                check: bool, opset: int) -> dict[str, str]:
    """int8 graphs: the weight MatMuls dynamically quantized. The conv encoder is quantized too
    (exported with its convolutions as MatMuls, see graphs.ConvAsMatMul) unless that costs
    more than ``INT8_CONV_AGREEMENT_COST`` argmax agreement against leaving it in float."""
    from export import variants

    names = {g: graph_file(g, "int8") for g in GRAPHS}
    conv_model = inference_copy(model, conv_as_matmul=True)
    sources = {  # where each int8 graph comes from: (float graph file, model it was exported from)
        "float_conv": {g: work / fp32_files[g] for g in GRAPHS},
        "int8_conv": {g: work / f"{g}.convmm.onnx" for g in GRAPHS},
    }
    for g in (FULL_GRAPH, ENCODER_GRAPH):
        export_graph(conv_model, g, sources["int8_conv"][g], opset)
    sources["int8_conv"][TRANSFORMER_GRAPH] = work / fp32_files[TRANSFORMER_GRAPH]
    chosen = "int8_conv"
    if check:
        seed = secrets.randbits(31)
        agreement = {}
        for option in sources:
            trial = variants.write_int8(sources[option][FULL_GRAPH], work / "trial.int8.onnx", ["MatMul"])
            agreement[option] = _parity(trial, model, seed, INT8_TRIAL_BATCHES)["argmax_agreement"]
        trial.unlink()
        if agreement["int8_conv"] < agreement["float_conv"] - INT8_CONV_AGREEMENT_COST:
            chosen = "float_conv"
        card.extra["int8_conv_encoder_trial"] = {"argmax_agreement": agreement, "seed": seed}
    for g in GRAPHS:
        variants.write_int8(sources[chosen][g], work / names[g], ["MatMul"])
    for g in (FULL_GRAPH, ENCODER_GRAPH):
        sources["int8_conv"][g].unlink()
    card.extra["int8_conv_encoder"] = "int8" if chosen == "int8_conv" else "float (int8 cost accuracy)"
    return names


def _new_card(model: Wav2Vec2Model, ckpt: Checkpoint, source: dict[str, Any], opset: int) -> ModelCard:
    import onnxruntime
    import torch

    return ModelCard(
        frame_stride=model.hop_length,
        receptive_field=model.receptive_field,
        logits_are_log_probs=True,
        model_config=ckpt.model_config.to_dict(),
        vocabulary=list(ckpt.vocab.tokens),  # type: ignore[union-attr]
        special_tokens=ckpt.vocab.special_tokens(),  # type: ignore[union-attr]
        source=source,
        versions={"torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__, "w2v": _w2v_version()},
        extra={"opset": opset, "parameters": sum(p.numel() for p in model.parameters()),
               "io": {g: {"inputs": list(i), "outputs": list(o)} for g, (i, o) in GRAPH_IO.items()}},
    )


def _w2v_version() -> str:
    from w2v_serve import version

    return version()


# ---------------------------------------------------------------------------- checks
def _session(path: Path):
    from w2v_serve.sessions import CPU_ONLY, open_session

    return open_session(path, providers=CPU_ONLY)


def _parity(path: Path, model: Wav2Vec2Model, seed: int, batches: Optional[tuple] = None) -> dict[str, Any]:
    from export.parity import PARITY_BATCHES, check_session

    return check_session(_session(path), model, seed, batches or PARITY_BATCHES)


def _check_all(model: Wav2Vec2Model, work: Path, card: ModelCard) -> None:
    """ONNX checker on every graph, TensorRT check on the fp32/fp16 graphs, parity per variant,
    encoder+transformer composition; results into ``card.checks``. fp32 failures raise."""
    from export.parity import check_composition
    from export.trt_check import check_model

    seed = secrets.randbits(31)  # fresh audio each export, reproducible from the card
    checks: dict[str, Any] = {"onnx_checker": {}, "tensorrt": {}, "parity": {}}
    for variant, files in card.variants.items():
        for graph, name in files.items():
            try:
                onnx.checker.check_model(str(work / name), full_check=True)
            except onnx.checker.ValidationError as e:
                raise ExportError(f"{name} fails the ONNX checker: {e}") from e
            checks["onnx_checker"][name] = "ok"
            report = check_model(work / name)
            checks["tensorrt"][name] = {"ok": report.ok, "problems": report.problems()}
            if variant in ("fp32", "fp16") and not report.ok:
                raise ExportError(f"{name} is not TensorRT-friendly: {'; '.join(report.problems())}")
        checks["parity"][variant] = _parity(work / files[FULL_GRAPH], model, seed)
    fp32 = checks["parity"]["fp32"]
    if not fp32["lengths_equal"] or fp32["max_rel_error"] > FP32_MAX_REL_ERROR:
        raise ExportError(f"the fp32 graph disagrees with PyTorch: {fp32}")
    files = card.variants["fp32"]
    checks["composition"] = check_composition(
        _session(work / files[ENCODER_GRAPH]), _session(work / files[TRANSFORMER_GRAPH]),
        _session(work / files[FULL_GRAPH]), seed,
    )
    if checks["composition"]["max_rel_error"] > FP32_MAX_REL_ERROR:
        raise ExportError(f"encoder + transformer graphs differ from the full graph: {checks['composition']}")
    if "int8" in card.variants:
        checks["tensorrt_note"] = ("int8 graphs use ONNX Runtime's dynamic quantization ops; for TensorRT "
                                   "int8, build the engine from the fp32 graph with TensorRT's own calibration")
    card.checks = checks


def _move_into(work: Path, out_dir: Path, card: ModelCard) -> None:
    """Move the finished files into ``out_dir``; the card last, so it only ever lists files
    that are there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # A precision check record of a model exported here before measured other weights.
    (out_dir / PRECISION_CHECK_NAME).unlink(missing_ok=True)
    write_card(work, card)
    names = [VOCAB_NAME] + [n for files in card.variants.values() for n in files.values()]
    names += list(card.extra.get("external_data", {}).values())
    names += [card.decoding[k] for k in ("lm", "unigrams") if card.decoding.get(k)]
    for name in names:
        os.replace(work / name, out_dir / name)
    write_card(out_dir, card)
    # Graphs of an earlier export into the same directory that this one did not write (a variant
    # no longer asked for) would look like part of this model: remove them.
    for stale in list(out_dir.iterdir()):
        if stale.suffix == ".onnx" and stale.name not in names and stale.is_file():
            for companion in (stale, stale.with_name(stale.name + ".data"), stale.with_name(stale.name + "_data")):
                if companion.name not in names:
                    companion.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- CLI
def cmd_export(args: argparse.Namespace) -> int:
    name, language = getattr(args, "name", None), getattr(args, "language_code", None)
    if name is not None:
        from w2v_serve.service.models import NAME_PATTERN

        if not NAME_PATTERN.fullmatch(name):
            raise ExportError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    out = export_model(args.checkpoint, args.out, fp16=args.fp16, int8=args.int8,
                       check=not args.no_check, opset=args.opset,
                       external_data=True if getattr(args, "external_data", False) else None)
    if name or language:
        from w2v_serve.model_dir import ModelDirectory

        directory = ModelDirectory.load(out)
        directory.card.name = name or directory.card.name
        directory.card.language_code = language or directory.card.language_code
        directory.write_card()
    _print_summary(out)
    if not getattr(args, "no_precision_check", False):
        from w2v_serve.precision import ensure_precision_record

        # This CPU's fast precision, chosen now, so that the first `w2v transcribe` runs it.
        ensure_precision_record(out, trigger="export")
    if getattr(args, "repository", None):
        _write_repository(out, Path(args.repository))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """``w2v import hf SRC [--out CKPT] [--export DIR]``: import, and with ``--export`` write the
    model directory from the imported checkpoint in the same run."""
    from training.commands import import_from_args

    ckpt = import_from_args(args)
    if getattr(args, "export", None):
        out = export_model(ckpt, args.export, external_data=True if args.external_data else None)
        _print_summary(out)
    return 0


def _print_summary(out: Path) -> None:
    from w2v_serve.model_dir import ModelDirectory

    card = ModelDirectory.load(out).card
    print(f"wrote {out}: variants {', '.join(card.variants)}; {len(card.vocabulary)} tokens, "
          f"{card.extra.get('parameters', 0) / 1e6:.1f} M parameters, opset {card.extra.get('opset')}")
    for variant, result in card.checks.get("parity", {}).items():
        print(f"  {variant}: max relative error {result['max_rel_error']:.2e}, "
              f"argmax agreement {result['argmax_agreement']:.4f} vs PyTorch")


def _write_repository(model_dir: Path, repository: Path) -> None:
    """``--repository DIR``: also write a Triton model repository around the model directory."""
    from w2v_serve.triton.repository import write_repository

    write_repository(model_dir, repository)
    print(f"wrote Triton model repository {repository}")
