"""The project's checkpoint format, read without executing pickled code.

A checkpoint is one file written by ``torch.save`` holding only plain containers, strings,
numbers and tensors::

    {"format": "w2v-checkpoint", "version": 1,
     "kind": "ctc" | "pretrain" | "encoder",
     "model_config": {...ModelConfig...},
     "vocab": {"tokens": [...], ...} | None,
     "model": {parameter name: tensor},
     "meta": {"source": ..., ...},
     "training": {...} | absent}           # optimizer, scheduler, RNG, data position (training/)

It is loaded with ``torch.load(weights_only=True)``: the restricted unpickler that builds
tensors and containers and refuses any other global. Writes are atomic (temporary file, fsync,
rename), so an interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from training.config import ConfigError, ModelConfig
from training.model import Wav2Vec2Model
from w2v_serve.vocab import Vocabulary

FORMAT = "w2v-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, of another kind, or does not fit the model."""


@dataclass
class Checkpoint:
    model_config: ModelConfig
    model_state: dict[str, Tensor]
    vocab: Optional[Vocabulary] = None
    meta: dict[str, Any] = field(default_factory=dict)
    training: Optional[dict[str, Any]] = None

    @property
    def kind(self) -> str:
        if self.model_config.vocab_size:
            return "ctc"
        if self.model_config.quantizer:
            return "pretrain"
        return "encoder"

    @classmethod
    def from_model(cls, model: Wav2Vec2Model, vocab: Optional[Vocabulary] = None,
                   meta: Optional[dict[str, Any]] = None, training: Optional[dict[str, Any]] = None) -> "Checkpoint":
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(model.config, state, vocab, dict(meta or {}), training)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "model_config": self.model_config.to_dict(),
            "vocab": self.vocab.to_dict() if self.vocab is not None else None,
            "model": self.model_state,
            "meta": self.meta,
        }
        if self.training is not None:
            d["training"] = self.training
        return d

    def save(self, path: str | Path) -> None:
        if self.vocab is not None and self.model_config.vocab_size not in (None, len(self.vocab)):
            raise CheckpointError(
                f"vocabulary has {len(self.vocab)} tokens but the CTC head has {self.model_config.vocab_size} outputs"
            )
        atomic_torch_save(self.to_dict(), path)

    def build_model(self) -> Wav2Vec2Model:
        """A model with this checkpoint's weights (eval mode)."""
        model = Wav2Vec2Model(self.model_config)
        load_state_checked(model, self.model_state)
        return model.eval()


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def safe_torch_load(path: str | Path, extra_globals: tuple = ()) -> Any:
    """``torch.load`` with the weights-only unpickler; clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    try:
        with torch.serialization.safe_globals(list(extra_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError) as e:
        raise CheckpointError(f"{path}: truncated or not a checkpoint ({type(e).__name__}: {e})") from e
    except Exception as e:  # the weights-only unpickler refusing a global is an UnpicklingError
        raise CheckpointError(f"{path}: cannot be loaded safely: {e}") from e


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a project checkpoint (any kind)."""
    d = safe_torch_load(path)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        hint = ""
        if isinstance(d, dict) and ("cfg" in d or "args" in d) and "model" in d:
            hint = " (it looks like a fairseq checkpoint: convert it with `w2v import fairseq`)"
        raise CheckpointError(f"{path}: not a w2v checkpoint{hint}")
    version = d.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r} is newer than this w2v supports ({VERSION})")
    try:
        config = ModelConfig.from_dict(d["model_config"])
    except (ConfigError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from e
    vocab = Vocabulary.from_dict(d["vocab"]) if d.get("vocab") else None
    return Checkpoint(config, d["model"], vocab, d.get("meta") or {}, d.get("training"))


def load_state_checked(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load ``state`` strictly; on any mismatch name the first offending key and its shapes."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointError(f"checkpoint does not fit the model: missing key {key!r} (expected shape {tuple(tensor.shape)})")
        got = state[key]
        if not isinstance(got, Tensor):
            raise CheckpointError(f"checkpoint does not fit the model: {key!r} is not a tensor")
        if tuple(got.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint does not fit the model: {key!r} has shape {tuple(got.shape)}, "
                f"the model expects {tuple(tensor.shape)}"
            )
    for key in state:
        if key not in expected:
            raise CheckpointError(f"checkpoint does not fit the model: unexpected key {key!r} with shape {tuple(state[key].shape)}")
    model.load_state_dict(dict(state), strict=True)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
