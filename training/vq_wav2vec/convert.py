"""Import fairseq wav2vec / vq-wav2vec checkpoints (``arch wav2vec``), and the project's own
vq-wav2vec checkpoint file.

The published vq-wav2vec.pt (Gumbel) and vq-wav2vec_kmeans.pt carry their configuration as an
``argparse.Namespace`` (``args``) whose missing keys take the argparse era's defaults (fairseq's
``base_wav2vec_architecture``); later checkpoints carry a ``cfg`` dict whose missing keys take
``Wav2VecConfig``'s. Both map onto ``VQWav2VecConfig`` and their parameters are renamed onto
``VQWav2VecModel``. Nothing is executed from the file: the weights-only unpickler of
``training.importers.fairseq`` (tensors, containers, the Namespace, numpy scalars) reads it.

The project's file is ``{"format": "w2v-vq-wav2vec", "version": 1, "model_config": {...},
"model": {name: tensor}, "meta": {...}}``, written atomically, read weights-only.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from torch import Tensor

from training.checkpoint import FORMAT as W2V_FORMAT
from training.checkpoint import CheckpointError, atomic_torch_save, file_sha256, load_state_checked, safe_torch_load
from training.config import ConfigError
from training.importers.common import Rule, rename_state
from training.importers.fairseq import FAIRSEQ_IGNORED, _as_dict, _fairseq_allowed_globals, parse_conv_layers
from training.vq_wav2vec.config import VQWav2VecConfig
from training.vq_wav2vec.model import VQWav2VecModel

VQ_FORMAT = "w2v-vq-wav2vec"
VQ_VERSION = 1

FAIRSEQ_VQ_RULES: list[Rule] = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.", r"feature_extractor.conv_layers.\1.norm."),
    (r"^vector_quantizer\.vars$", "quantizer.codevectors"),                 # Gumbel [1, V·books, d/G]
    (r"^vector_quantizer\.embedding$", "quantizer.codevectors"),            # k-means [V, books, d/G]
    (r"^vector_quantizer\.weight_proj\.(\d+)\.0\.", r"quantizer.hidden.\1."),    # depth > 1: Linear, act
    (r"^vector_quantizer\.weight_proj\.\d+\.(weight|bias)$", r"quantizer.logits.\1"),
    (r"^vector_quantizer\.weight_proj\.(weight|bias)$", r"quantizer.logits.\1"),  # depth 1
    (r"^vector_quantizer\.projection\.0\.", "quantizer.projection."),
    (r"^vector_quantizer\.projection\.1\.", "quantizer.projection_norm."),
    (r"^feature_aggregator\.conv_layers\.(\d+)\.1\.", r"aggregator.layers.\1.conv."),   # 0 is the padding
    (r"^feature_aggregator\.conv_layers\.(\d+)\.3\.", r"aggregator.layers.\1.norm."),
    (r"^feature_aggregator\.residual_proj\.(\d+)\.", r"aggregator.layers.\1.residual."),
    (r"^wav2vec_predictions\.", "predictions."),
]

# Defaults of the keys a checkpoint may lack: the argparse era (``base_wav2vec_architecture``,
# the published vq-wav2vec.pt / vq-wav2vec_kmeans.pt) and the hydra era (``Wav2VecConfig``).
LEGACY_DEFAULTS: dict[str, Any] = dict(
    conv_feature_layers="[(512, 10, 5)] + [(512, 8, 4)] + [(512, 4, 2)] * 3",
    conv_aggregator_layers="[(512, 3, 1)] * 9", prediction_steps=12, num_negatives=1,
    sample_distance=None, cross_sample_negatives=0, dropout=0.0, dropout_features=0.0, dropout_agg=0.0,
    encoder="cnn", aggregator="cnn", skip_connections_feat=False, skip_connections_agg=False,
    residual_scale=0.5, no_conv_bias=False, agg_zero_pad=False, log_compression=False,
    balanced_classes=False, infonce=False, project_features="none", non_affine_group_norm=False,
    offset="auto", activation="relu", vq_type="none", vq_vars=320, vq_groups=2, vq_dim=0, vq_depth=1,
    combine_groups=False, vq_temp="(2.0, 0.5, 0.999995)", vq_gamma=0.25,
)
HYDRA_DEFAULTS: dict[str, Any] = dict(
    LEGACY_DEFAULTS,
    conv_feature_layers="[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), (512, 1, 1), (512, 1, 1), (512, 1, 1)]",
    conv_aggregator_layers="[(512, 2, 1), (512, 3, 1), (512, 4, 1), (512, 5, 1), (512, 6, 1), (512, 7, 1), (512, 8, 1), (512, 9, 1), (512, 10, 1), (512, 11, 1), (512, 12, 1), (512, 13, 1)]",
    num_negatives=10, skip_connections_agg=True, log_compression=True, vq_temp=(2.0, 0.5, 0.999995),
)


@dataclass
class VQWav2VecCheckpoint:
    config: VQWav2VecConfig
    model_state: dict[str, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: VQWav2VecModel, meta: Optional[dict[str, Any]] = None) -> "VQWav2VecCheckpoint":
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(model.config, state, dict(meta or {}))

    def build_model(self) -> VQWav2VecModel:
        """A model with these weights, in eval mode."""
        model = VQWav2VecModel(self.config)
        load_state_checked(model, self.model_state)
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return {"format": VQ_FORMAT, "version": VQ_VERSION, "kind": "vq-wav2vec",
                "model_config": self.config.to_dict(), "model": self.model_state, "meta": self.meta}

    def save(self, path: str | Path) -> None:
        atomic_torch_save(self.to_dict(), path)


def _not_vq_wav2vec(path: Path, d: Any) -> Optional[str]:
    """Why ``d`` (a loaded file) is not a vq-wav2vec checkpoint, or None when it may be one."""
    if not isinstance(d, dict):
        return f"{path}: not a checkpoint (a {type(d).__name__})"
    if d.get("format") == W2V_FORMAT:
        return (f"{path}: is a w2v wav2vec 2.0 checkpoint ({d.get('kind')}), not vq-wav2vec "
                "(`w2v codes` takes it as it is)")
    if "model" not in d or not ("args" in d or "cfg" in d):
        return f"{path}: not a fairseq checkpoint (no 'model' state with 'args' or 'cfg')"
    return None


def load_vq_wav2vec_checkpoint(path: str | Path) -> VQWav2VecCheckpoint:
    """The project's vq-wav2vec file, or a fairseq wav2vec / vq-wav2vec checkpoint (imported)."""
    path = Path(path)
    return vq_wav2vec_checkpoint_from(safe_torch_load(path, _fairseq_allowed_globals()), path)


def vq_wav2vec_checkpoint_from(d: Any, path: str | Path) -> VQWav2VecCheckpoint:
    """``load_vq_wav2vec_checkpoint`` of the already loaded contents ``d`` of ``path``."""
    path = Path(path)
    if isinstance(d, dict) and d.get("format") == VQ_FORMAT:
        version = d.get("version")
        if not isinstance(version, int) or version > VQ_VERSION:
            raise CheckpointError(f"{path}: vq-wav2vec checkpoint version {version!r} is newer than this w2v supports")
        try:
            config = VQWav2VecConfig.from_dict(d["model_config"])
        except (ConfigError, TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: bad vq-wav2vec model config: {e}") from e
        return VQWav2VecCheckpoint(config, d["model"], d.get("meta") or {})
    return vq_wav2vec_from_fairseq(d, path)


def import_fairseq_vq_wav2vec(path: str | Path) -> VQWav2VecCheckpoint:
    """A fairseq ``wav2vec`` checkpoint: vq-wav2vec (Gumbel or k-means) or wav2vec (no quantizer)."""
    path = Path(path)
    return vq_wav2vec_from_fairseq(safe_torch_load(path, _fairseq_allowed_globals()), path)


def _fairseq_args(d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """(model args, task args, criterion args, era) of either config style."""
    if d.get("cfg") is not None:
        cfg = _as_dict(d["cfg"])
        return _as_dict(cfg.get("model")), _as_dict(cfg.get("task")), _as_dict(cfg.get("criterion")), "hydra"
    args = _as_dict(d["args"])
    return args, args, args, "legacy"


def _literal(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise CheckpointError(f"cannot parse {what} {value!r}") from e
    return value


def fairseq_vq_wav2vec_config(model: dict[str, Any], task: dict[str, Any], criterion: dict[str, Any],
                              era: str) -> VQWav2VecConfig:
    """``VQWav2VecConfig`` of a fairseq ``Wav2VecModel``'s arguments (missing ones: ``era``'s defaults)."""
    defaults = HYDRA_DEFAULTS if era == "hydra" else LEGACY_DEFAULTS

    def get(key: str) -> Any:
        value = model.get(key)
        return defaults[key] if value is None else value

    for key, allowed in (("encoder", "cnn"), ("aggregator", "cnn"), ("project_features", "none")):
        if get(key) != allowed:
            raise CheckpointError(f"unsupported wav2vec {key}={get(key)!r} (only {allowed!r})")
    offset = get("offset")
    infonce = model.get("infonce")
    if not isinstance(infonce, bool):   # the hydra era interpolates it from the criterion
        infonce = bool(criterion.get("infonce", False))
    loss_weights = criterion.get("loss_weights")
    temp = _literal(get("vq_temp"), "vq_temp")
    try:
        return VQWav2VecConfig(
            conv_feature_layers=parse_conv_layers(str(get("conv_feature_layers"))),
            activation=get("activation"), log_compression=bool(get("log_compression")),
            skip_connections_feat=bool(get("skip_connections_feat")), residual_scale=float(get("residual_scale")),
            non_affine_group_norm=bool(get("non_affine_group_norm")),
            normalize_waveform=bool(task.get("normalize", False)),
            vq_type=get("vq_type") or "none", vq_vars=int(get("vq_vars")), vq_groups=int(get("vq_groups")),
            vq_dim=int(get("vq_dim")), vq_depth=int(get("vq_depth")), combine_groups=bool(get("combine_groups")),
            vq_temp=list(temp), vq_gamma=float(get("vq_gamma")),
            conv_aggregator_layers=parse_conv_layers(str(get("conv_aggregator_layers"))),
            skip_connections_agg=bool(get("skip_connections_agg")), agg_conv_bias=not get("no_conv_bias"),
            agg_zero_pad=bool(get("agg_zero_pad")), dropout=float(get("dropout")),
            dropout_features=float(get("dropout_features")), dropout_agg=float(get("dropout_agg")),
            prediction_steps=int(get("prediction_steps")), num_negatives=int(get("num_negatives")),
            cross_sample_negatives=int(get("cross_sample_negatives")),
            sample_distance=None if get("sample_distance") is None else int(get("sample_distance")),
            offset=None if offset == "auto" else int(offset), balanced_classes=bool(get("balanced_classes")),
            infonce=infonce, loss_weights=[float(w) for w in _literal(loss_weights, "loss_weights")] if loss_weights else None,
        )
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"fairseq wav2vec config does not fit: {e}") from e


def vq_wav2vec_from_fairseq(d: Any, path: str | Path) -> VQWav2VecCheckpoint:
    """Import an already loaded fairseq checkpoint ``d`` (read from ``path``)."""
    path = Path(path)
    reason = _not_vq_wav2vec(path, d)
    if reason:
        raise CheckpointError(reason)
    model, task, criterion, era = _fairseq_args(d)
    arch = model.get("_name") or model.get("arch")
    if arch is None and "wav2vec_predictions.project_to_steps.weight" in d["model"]:
        arch = "wav2vec"
    if arch != "wav2vec":
        if str(arch).startswith("wav2vec") or model.get("w2v_args") is not None:
            raise CheckpointError(f"{path}: is a wav2vec 2.0 checkpoint (architecture {arch!r}), not vq-wav2vec: "
                                  "import it with `w2v import fairseq`")
        raise CheckpointError(f"{path}: not a wav2vec / vq-wav2vec checkpoint (architecture {arch!r})")
    config = fairseq_vq_wav2vec_config(model, task, criterion, era)
    state = rename_state(d["model"], FAIRSEQ_VQ_RULES, FAIRSEQ_IGNORED)
    ckpt = VQWav2VecCheckpoint(config, state, {"source": "fairseq", "source_path": str(path.resolve()),
                                               "source_sha256": file_sha256(path) if path.is_file() else None,
                                               "architecture": "vq-wav2vec" if config.vq_type != "none" else "wav2vec"})
    ckpt.build_model()   # checks that every parameter fits (names and shapes)
    return ckpt
