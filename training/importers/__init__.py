"""Importers of published checkpoints into the project's checkpoint format, one module per
source format: ``hf`` (transformers / the Hugging Face Hub: wav2vec 2.0, HuBERT, WavLM,
data2vec-audio, MMS) and ``fairseq`` (wav2vec2, wav2vec_ctc). ``common`` holds the renaming
and checking they share; ``hub`` resolves Hub ids in the local cache."""

from __future__ import annotations

from typing import Callable

from training.checkpoint import Checkpoint
from training.importers.common import WEIGHT_NORM_RULES, rename_state
from training.importers.fairseq import FAIRSEQ_IGNORED, FAIRSEQ_RULES, import_fairseq, parse_conv_layers
from training.importers.hf import HF_RULES, SUPPORTED_TYPES, import_hf

IMPORTERS: dict[str, Callable[..., Checkpoint]] = {"hf": import_hf, "fairseq": import_fairseq}

__all__ = ["FAIRSEQ_IGNORED", "FAIRSEQ_RULES", "HF_RULES", "IMPORTERS", "SUPPORTED_TYPES",
           "WEIGHT_NORM_RULES", "import_fairseq", "import_hf", "parse_conv_layers", "rename_state"]
