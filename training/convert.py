"""Checkpoint import under its older module name; the importers live in ``training.importers``
(one module per source format)."""

from training.importers import (  # noqa: F401
    FAIRSEQ_IGNORED, FAIRSEQ_RULES, HF_RULES, IMPORTERS, WEIGHT_NORM_RULES, import_fairseq, import_hf,
    parse_conv_layers, rename_state,
)
from training.importers.common import Rule  # noqa: F401
from training.importers.fairseq import _as_dict, _fairseq_allowed_globals  # noqa: F401
