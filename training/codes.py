"""Discrete speech units: ``w2v codes`` (its parser is in ``w2v_serve.cli.codes``).

A unit per frame and quantizer group, from

* a vq-wav2vec checkpoint (fairseq's vq-wav2vec.pt / vq-wav2vec_kmeans.pt, or the project's
  vq-wav2vec file): the Gumbel scores' argmax without noise, or the nearest k-means codeword, of
  the encoder's output (as fairseq's examples/wav2vec/vq-wav2vec_featurize.py), 10 ms frames;
* a wav2vec 2.0 checkpoint with a quantizer (a w2v pre-training checkpoint, or a fairseq
  wav2vec2 pre-training checkpoint, imported on the fly): the quantizer's argmax of the scores
  of LayerNorm(z), without noise, 20 ms frames.

One line per input: ``path<TAB>units``. ``pairs`` (default) writes vq-wav2vec_featurize.py's
``a-b`` per frame (one index per group, joined by ``-``), frames separated by spaces; ``flat``
writes one index per frame, Σ_g i_g · V^(G-1-g) (``g1 * V + g2`` for two groups). A file that
cannot be read fails alone (stderr); the exit code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, TextIO

import numpy as np
import torch
from torch import Tensor

from training.checkpoint import FORMAT as W2V_FORMAT
from training.checkpoint import CheckpointError, load_checkpoint, safe_torch_load
from training.importers.fairseq import _fairseq_allowed_globals, import_fairseq
from training.vq_wav2vec.convert import VQ_FORMAT, VQWav2VecCheckpoint, vq_wav2vec_checkpoint_from
from w2v_serve.audio import AudioError, load_audio

FORMATS = ("pairs", "flat")
# fairseq's vq-wav2vec_featurize.py splits longer inputs into equal chunks of at most this many samples.
DEFAULT_MAX_SAMPLES = 1_300_000


@dataclass
class UnitExtractor:
    """A model that maps 16 kHz audio [L] to units [T, G] (indices < ``num_vars``)."""

    name: str                                   # "vq-wav2vec (gumbel)", "wav2vec 2.0", ...
    num_groups: int
    num_vars: int
    receptive_field: int                        # the fewest samples that give one frame
    codes_fn: Callable[[Tensor], Tensor]        # [1, L] -> [1, T, G]
    device: torch.device

    def codes(self, audio: np.ndarray, max_samples: int = DEFAULT_MAX_SAMPLES) -> Tensor:
        """[T, G] units of one recording; longer ones run in equal chunks of at most
        ``max_samples`` (fairseq's featurize script does the same) and are concatenated."""
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0).to(self.device)
        div = 1
        while x.shape[-1] // div > max_samples:
            div += 1
        with torch.inference_mode():
            parts = [self.codes_fn(chunk)[0] for chunk in x.chunk(div, dim=-1)]
        return torch.cat(parts, dim=0).cpu()


def _from_vq(ckpt: VQWav2VecCheckpoint, device: torch.device) -> UnitExtractor:
    model = ckpt.build_model().to(device)
    if model.quantizer is None:
        raise CheckpointError("this wav2vec checkpoint has no quantizer (vq_type 'none'): it has no discrete units")
    cfg = ckpt.config
    return UnitExtractor(f"vq-wav2vec ({cfg.vq_type})", cfg.vq_groups, cfg.vq_vars, model.receptive_field,
                         lambda x: model.quantize(x)[0], device)


def _from_wav2vec2(ckpt, device: torch.device) -> UnitExtractor:
    if not ckpt.model_config.quantizer:
        raise CheckpointError(f"this wav2vec 2.0 checkpoint ({ckpt.kind}) is without the quantizer: units need "
                              "a pre-training checkpoint (w2v pretrain, or an imported pre-training model)")
    model = ckpt.build_model().to(device)

    def codes_fn(x: Tensor) -> Tensor:
        features, _ = model.encode_features(x)
        return model.quantizer(model.feature_projection.layer_norm(features)).codes

    cfg = ckpt.model_config
    return UnitExtractor("wav2vec 2.0", cfg.num_codevector_groups, cfg.num_codevectors, model.receptive_field,
                         codes_fn, device)


def load_unit_extractor(path: str | Path, device: str | torch.device = "cpu") -> UnitExtractor:
    """Whichever checkpoint ``path`` is (see the module's docstring), in eval mode on ``device``."""
    path = Path(path)
    device = torch.device(device)
    d = safe_torch_load(path, _fairseq_allowed_globals())
    if isinstance(d, dict) and d.get("format") == W2V_FORMAT:
        del d
        return _from_wav2vec2(load_checkpoint(path), device)
    if isinstance(d, dict) and d.get("format") == VQ_FORMAT:
        return _from_vq(vq_wav2vec_checkpoint_from(d, path), device)
    if isinstance(d, dict) and "model" in d and ("args" in d or "cfg" in d):
        if _fairseq_arch(d) == "wav2vec":
            return _from_vq(vq_wav2vec_checkpoint_from(d, path), device)
        del d
        return _from_wav2vec2(import_fairseq(path), device)
    raise CheckpointError(f"{path}: not a w2v, vq-wav2vec or fairseq checkpoint")


def _fairseq_arch(d: dict) -> object:
    """fairseq's architecture name of a loaded checkpoint (``wav2vec`` for wav2vec / vq-wav2vec)."""
    cfg = d.get("cfg")
    if isinstance(cfg, dict):
        arch = (cfg.get("model") or {}).get("_name")
    else:
        arch = getattr(d.get("args"), "arch", None)
    if arch is None and "wav2vec_predictions.project_to_steps.weight" in d["model"]:
        return "wav2vec"
    return arch


def format_units(codes: Tensor, fmt: str, num_vars: int) -> str:
    """[T, G] units as one line: ``pairs`` "a-b c-d ..." (vq-wav2vec_featurize.py), ``flat``
    "n1 n2 ..." with n = Σ_g i_g · V^(G-1-g)."""
    if fmt == "pairs":
        return " ".join("-".join(map(str, frame)) for frame in codes.tolist())
    if fmt == "flat":
        g = codes.shape[1]
        scale = torch.tensor([num_vars ** (g - 1 - i) for i in range(g)], dtype=torch.long)
        return " ".join(map(str, (codes.long() * scale).sum(dim=1).tolist()))
    raise ValueError(f"unknown units format {fmt!r} (one of {', '.join(FORMATS)})")


def gather_inputs(inputs: Iterable[str]) -> list[str]:
    """Audio files, directories and globs as ``w2v transcribe`` takes them; a ``.tsv`` is a
    fairseq manifest (first line the root folder, then ``relative/path<TAB>samples``)."""
    from training.manifest import read_manifest
    from w2v_serve.cli.transcribe import expand_inputs

    out: list[str] = []
    for arg in inputs:
        if arg.endswith(".tsv") and Path(arg).is_file():
            out += [str(u.path) for u in read_manifest(arg, labels=None)]
        else:
            out += expand_inputs([arg])
    return out


def write_units(extractor: UnitExtractor, files: list[str], out: TextIO, fmt: str = "pairs",
                with_path: bool = True, max_samples: int = DEFAULT_MAX_SAMPLES,
                errors: Optional[TextIO] = None) -> list[tuple[str, str]]:
    """One line per file to ``out``; returns the (file, reason) of those that failed. Without the
    path, a failed file leaves an empty line, so that line n still belongs to the n-th file."""
    errors = errors if errors is not None else sys.stderr
    failed: list[tuple[str, str]] = []
    for f in files:
        try:
            audio = load_audio(f)
            if len(audio) < extractor.receptive_field:
                raise AudioError(f"{f}: too short ({len(audio)} samples at 16 kHz; the model needs at least "
                                 f"{extractor.receptive_field} for one frame)")
            line = format_units(extractor.codes(audio, max_samples), fmt, extractor.num_vars)
        except (AudioError, OSError) as e:
            reason = str(e) if str(f) in str(e) else f"{f}: {e}"
            failed.append((f, reason))
            print(f"w2v codes: {reason}", file=errors, flush=True)
            if not with_path:
                out.write("\n")
            continue
        out.write(f"{f}\t{line}\n" if with_path else f"{line}\n")
    out.flush()
    return failed


def cmd_codes(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    files = gather_inputs(args.inputs)
    if not files:
        raise CheckpointError("no input files")
    extractor = load_unit_extractor(args.checkpoint, device)
    print(f"w2v codes: {extractor.name}, {extractor.num_groups} group(s) x {extractor.num_vars} codewords, "
          f"{len(files)} file(s)", file=sys.stderr, flush=True)
    if args.output:
        target = Path(args.output)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                failed = write_units(extractor, files, out, args.format, not args.no_path, args.max_samples)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        failed = write_units(extractor, files, sys.stdout, args.format, not args.no_path, args.max_samples)
    if failed:
        print(f"w2v codes: {len(failed)} of {len(files)} file(s) failed", file=sys.stderr)
        return 1
    return 0
