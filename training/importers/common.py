"""What every importer shares: renaming a source's parameters onto ``Wav2Vec2Model`` and
building the checked checkpoint. Nothing is executed from source files (safetensors, or the
weights-only unpickler)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import Tensor

from training.checkpoint import Checkpoint, CheckpointError, load_state_checked
from training.config import ModelConfig
from training.model import Wav2Vec2Model
from w2v_serve.vocab import Vocabulary

Rule = tuple[str, str]

# Both weight_norm key styles end up as our explicit weight_g / weight_v.
WEIGHT_NORM_RULES: list[Rule] = [
    (r"\.parametrizations\.weight\.original0$", ".weight_g"),
    (r"\.parametrizations\.weight\.original1$", ".weight_v"),
]


def rename_state(state: Mapping[str, Tensor], rules: list[Rule],
                 ignore: Optional[re.Pattern] = None) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if ignore is not None and ignore.search(key):
            continue
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if new in out:
            raise CheckpointError(f"two source keys map to {new!r} (one is {key!r})")
        out[new] = value
    _unfold_plain_pos_conv_weight(out)
    return out


def _unfold_plain_pos_conv_weight(state: dict[str, Tensor]) -> None:
    """A positional conv saved without weight_norm (plain ``weight``) becomes g = ||w||, v = w."""
    key = "encoder.pos_conv.conv.weight"
    if key in state:
        w = state.pop(key)
        state["encoder.pos_conv.conv.weight_v"] = w
        state["encoder.pos_conv.conv.weight_g"] = w.norm(dim=(0, 1), keepdim=True)


def _fill_unused_mask_embedding(model: Wav2Vec2Model, state: dict[str, Tensor], meta: dict) -> None:
    """Some exported CTC models drop the mask embedding (unused at inference): keep ours."""
    if "mask_embedding" not in state:
        state["mask_embedding"] = model.mask_embedding.detach().clone()
        meta["note"] = "source had no mask embedding; a fresh one was initialized (unused at inference)"


def build_checked(config: ModelConfig, state: dict[str, Tensor], vocab: Optional[Vocabulary],
                  meta: dict[str, Any]) -> Checkpoint:
    model = Wav2Vec2Model(config)
    _fill_unused_mask_embedding(model, state, meta)
    load_state_checked(model, state)
    return Checkpoint.from_model(model, vocab, meta)


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value
