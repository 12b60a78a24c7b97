"""Configuration of a wav2vec / vq-wav2vec network (Schneider et al. 2019; Baevski et al. 2019).

Field names follow fairseq's ``Wav2VecModel`` arguments, so that a fairseq checkpoint's ``args``
map onto them one to one (``training/vq_wav2vec/convert.py``). Defaults are the paper's
vq-wav2vec, as fairseq's published training command sets it up (examples/wav2vec/README.md,
"Train a gumbel vq-wav2vec model"): 512 channels, an 8-layer encoder of total stride 160
(10 ms), a 12-layer aggregator, G = 2 groups of V = 320 codewords shared between the groups,
K = 12 prediction steps with 10 negatives each.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from training.config import ConfigError

# (channels, kernel, stride): kernels (10, 8, 4, 4, 4, 1, 1, 1), strides (5, 4, 2, 2, 2, 1, 1, 1).
VQ_WAV2VEC_ENCODER: tuple[tuple[int, int, int], ...] = (
    (512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), (512, 1, 1), (512, 1, 1), (512, 1, 1),
)
# 12 layers, stride 1, kernel sizes 2, 3, ..., 13.
VQ_WAV2VEC_AGGREGATOR: tuple[tuple[int, int, int], ...] = tuple((512, k, 1) for k in range(2, 14))

VQ_TYPES = ("gumbel", "kmeans", "none")


@dataclass
class VQWav2VecConfig:
    # Encoder f: X -> Z (fairseq's ConvFeatureExtractionModel).
    conv_feature_layers: list = field(default_factory=lambda: [list(c) for c in VQ_WAV2VEC_ENCODER])
    activation: str = "gelu"                 # "relu" (wav2vec) | "gelu" (vq-wav2vec's command)
    log_compression: bool = False            # z = log(|z| + 1) after the encoder
    skip_connections_feat: bool = False
    residual_scale: float = 0.5              # skip connections scale by sqrt(residual_scale)
    non_affine_group_norm: bool = False
    normalize_waveform: bool = False         # fairseq's task.normalize
    # Quantizer q: Z -> Ẑ.
    vq_type: str = "gumbel"                  # "gumbel" | "kmeans" | "none" (wav2vec, no quantizer)
    vq_vars: int = 320                       # V, codewords per group
    vq_groups: int = 2                       # G
    vq_dim: int = 0                          # dimension of ẑ (0: the encoder's channels)
    vq_depth: int = 2                        # Gumbel: layers of the score map (2: linear-GELU-linear)
    combine_groups: bool = True              # one codebook shared by the G groups
    vq_temp: list = field(default_factory=lambda: [2.0, 0.5, 0.999995])   # Gumbel τ: start, end, decay
    vq_gamma: float = 0.25                   # k-means commitment weight γ
    # Aggregator g: Ẑ -> C (fairseq's ConvAggegator).
    conv_aggregator_layers: list = field(default_factory=lambda: [list(c) for c in VQ_WAV2VEC_AGGREGATOR])
    skip_connections_agg: bool = True
    agg_conv_bias: bool = True               # fairseq's not no_conv_bias
    agg_zero_pad: bool = False               # causal left padding: zeros, or (fairseq's default) replicate
    dropout: float = 0.0
    dropout_features: float = 0.0
    dropout_agg: float = 0.0
    # Future-step prediction loss (fairseq's Wav2VecPredictionsModel + Wav2vecCriterion).
    prediction_steps: int = 12               # K
    num_negatives: int = 10                  # distractors from the same utterance
    cross_sample_negatives: int = 0          # distractors from any utterance of the batch
    sample_distance: Optional[int] = None
    offset: Optional[int] = None             # frames between c_i and step 1's target; None: auto
    balanced_classes: bool = False
    infonce: bool = False                    # cross-entropy over {positive, negatives} instead of BCE
    loss_weights: Optional[list] = None      # weight of the quantizer's extra loss (k-means: [1])

    def __post_init__(self) -> None:
        self.conv_feature_layers = [list(map(int, c)) for c in self.conv_feature_layers]
        self.conv_aggregator_layers = [list(map(int, c)) for c in self.conv_aggregator_layers]
        self.vq_temp = [float(t) for t in self.vq_temp]
        if self.vq_type not in VQ_TYPES:
            raise ConfigError(f"vq_type must be one of {', '.join(VQ_TYPES)}, not {self.vq_type!r}")
        if self.activation not in ("relu", "gelu"):
            raise ConfigError(f"activation must be 'relu' or 'gelu', not {self.activation!r}")
        for name in ("conv_feature_layers", "conv_aggregator_layers"):
            layers = getattr(self, name)
            if not layers or any(len(c) != 3 for c in layers):
                raise ConfigError(f"{name} must be a non-empty list of [channels, kernel, stride]")
        if self.skip_connections_agg and any(s != 1 for _, _, s in self.conv_aggregator_layers):
            raise ConfigError("aggregator skip connections need stride 1 in every aggregator layer")
        if len(self.vq_temp) != 3:
            raise ConfigError(f"vq_temp must be (start, end, decay), not {self.vq_temp}")
        if self.vq_type != "none" and self.quantized_dim % self.vq_groups:
            raise ConfigError(f"vq_dim {self.quantized_dim} is not divisible by {self.vq_groups} groups")
        if self.vq_type == "kmeans" and self.quantized_dim != self.embed_dim:
            raise ConfigError("the k-means quantizer needs vq_dim equal to the encoder's channels")

    @property
    def embed_dim(self) -> int:
        """Channels of z (the encoder's last layer)."""
        return self.conv_feature_layers[-1][0]

    @property
    def quantized_dim(self) -> int:
        """Channels of ẑ."""
        return self.vq_dim if self.vq_dim > 0 else self.embed_dim

    @property
    def receptive_field(self) -> int:
        rf, hop = 1, 1
        for _, k, s in self.conv_feature_layers:
            rf += (k - 1) * hop
            hop *= s
        return rf

    @property
    def hop_length(self) -> int:
        return math.prod(s for _, _, s in self.conv_feature_layers)

    @property
    def prediction_offset(self) -> int:
        """fairseq's ``offset="auto"``: ceil(receptive field / hop), so that the first predicted
        step's receptive field does not overlap c_i's (3 frames for vq-wav2vec)."""
        if self.offset is not None:
            return int(self.offset)
        return math.ceil(self.receptive_field / self.hop_length)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQWav2VecConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown vq-wav2vec config keys: {', '.join(unknown)}")
        return cls(**d)


def vq_wav2vec_config(quantizer: str = "gumbel", **overrides: Any) -> VQWav2VecConfig:
    """The paper's vq-wav2vec with the ``gumbel`` or ``kmeans`` quantizer, as fairseq trained the
    published vq-wav2vec.pt / vq-wav2vec_kmeans.pt (the k-means model adds ``--loss-weights [1]``);
    ``"none"``: the same network without a quantizer (wav2vec-style continuous targets)."""
    if quantizer not in VQ_TYPES:
        raise ConfigError(f"quantizer must be one of {', '.join(VQ_TYPES)}, not {quantizer!r}")
    params: dict[str, Any] = dict(vq_type=quantizer, loss_weights=[1.0] if quantizer == "kmeans" else None)
    params.update(overrides)
    return VQWav2VecConfig(**params)


def tiny_vq_wav2vec_config(quantizer: str = "gumbel", **overrides: Any) -> VQWav2VecConfig:
    """32 channels, the paper's encoder geometry (hop 160), 3 aggregator layers, V = 16, K = 4:
    tens of thousands of parameters, for tests on 2 CPU cores."""
    params: dict[str, Any] = dict(
        conv_feature_layers=[[32, 10, 5], [32, 8, 4], [32, 4, 2], [32, 4, 2], [32, 4, 2], [32, 1, 1]],
        conv_aggregator_layers=[[32, 2, 1], [32, 3, 1], [32, 4, 1]],
        vq_vars=16, prediction_steps=4, num_negatives=5,
    )
    params.update(overrides)
    return vq_wav2vec_config(quantizer, **params)
