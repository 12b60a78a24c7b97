"""The project's one configuration system: dataclasses, serialized as plain dicts (JSON/YAML).

``ModelConfig`` describes a wav2vec 2.0 network. Presets: ``base`` and ``large`` (the paper's
BASE and LARGE/LV-60 architectures) and ``small`` (a few million parameters for 2 CPU cores).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Optional

# (channels, kernel, stride) of the paper's seven conv blocks: 400-sample receptive field, 320 hop.
PAPER_CONV_LAYERS: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


# The published model families this ModelConfig describes (one network with a few switches).
FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec_audio")


@dataclass
class ModelConfig:
    # Which published family the network follows; the switches below carry the differences.
    family: str = "wav2vec2"
    # Feature encoder f: X -> Z.
    extractor_mode: str = "default"          # "default" (GroupNorm in block 1) | "layer_norm"
    conv_layers: list = field(default_factory=lambda: [list(c) for c in PAPER_CONV_LAYERS])
    conv_bias: bool = False
    normalize_waveform: bool = False         # transformers' do_normalize / fairseq's task.normalize
    feature_grad_mult: float = 0.1           # gradient scale into the conv encoder (0 freezes it)
    # Context network g: Z -> C.
    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    layer_norm_first: bool = False           # False: post-LN (BASE); True: pre-LN (LARGE)
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    pos_conv_depth: int = 0                  # 0: one weight-normed conv; N: data2vec-audio's N plain convs
    feature_projection_layer_norm: bool = True   # HuBERT's feat_proj_layer_norm
    relative_position_buckets: int = 0       # WavLM's gated relative position bias (320); 0: none
    relative_position_max_distance: int = 800
    adapter_dim: Optional[int] = None        # MMS's per-language adapter in each block; None: none
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    dropout_input: float = 0.1               # on projected features (feat_proj_dropout)
    dropout_features: float = 0.1            # on the quantizer's input
    final_dropout: float = 0.0               # before the CTC head
    layer_drop: float = 0.05
    # Masking (applied only when a mask is passed; sampled by training.masking).
    mask_prob: float = 0.65
    mask_length: int = 10
    mask_min_masks: int = 2
    require_same_masks: bool = True          # fairseq's: every row of a batch gets the same number of masked steps
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 10
    # Quantizer and contrastive heads (pre-training); None/0 disables them.
    quantizer: bool = False
    num_codevector_groups: int = 2
    num_codevectors: int = 320
    codevector_dim: int = 256                # d of the concatenated entries (d/G per group)
    final_dim: int = 256                     # contrastive space (project_q / project_context)
    # CTC head over the vocabulary; None: no head.
    vocab_size: Optional[int] = None

    def __post_init__(self) -> None:
        self.conv_layers = [list(map(int, c)) for c in self.conv_layers]
        if self.family not in FAMILIES:
            raise ConfigError(f"family must be one of {', '.join(FAMILIES)}, not {self.family!r}")
        if self.extractor_mode not in ("default", "layer_norm"):
            raise ConfigError(f"extractor_mode must be 'default' or 'layer_norm', not {self.extractor_mode!r}")
        if any(len(c) != 3 for c in self.conv_layers):
            raise ConfigError("conv_layers must be a list of [channels, kernel, stride]")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % self.pos_conv_groups:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by pos_conv_groups {self.pos_conv_groups}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "ModelConfig":
        return self.from_dict({**self.to_dict(), **changes})


def base_config(**overrides: Any) -> ModelConfig:
    """BASE: 12 blocks x 768, 12 heads, FFN 3072, post-LN, GroupNorm feature encoder (95 M)."""
    return ModelConfig(**overrides)


def large_config(**overrides: Any) -> ModelConfig:
    """LARGE (LV-60 style): 24 x 1024, 16 heads, FFN 4096, pre-LN, LayerNorm conv blocks,
    conv bias, normalized waveform input, final_dim 768 (317 M)."""
    params: dict[str, Any] = dict(
        extractor_mode="layer_norm", conv_bias=True, normalize_waveform=True, embed_dim=1024,
        num_layers=24, num_heads=16, ffn_dim=4096, layer_norm_first=True, final_dim=768,
        codevector_dim=768, feature_grad_mult=1.0, layer_drop=0.0,
    )
    params.update(overrides)
    return ModelConfig(**params)


def small_config(**overrides: Any) -> ModelConfig:
    """A few million parameters, trainable on 2 CPU cores: 256-channel conv encoder with
    LayerNorm in every block, 4 pre-LN blocks x 256, 4 heads, FFN 1024; same 400/320 geometry.

    No per-utterance waveform normalization and no GroupNorm: the conv encoder then depends only
    on its 400-sample receptive field, so streaming can cache its features exactly. No conv bias:
    the first block's per-frame LayerNorm then makes the encoder exactly invariant to input gain
    (with a bias, quiet input is swamped by it and the encoder's output barely depends on the
    audio — training from scratch stalls)."""
    params: dict[str, Any] = dict(
        extractor_mode="layer_norm",
        conv_layers=[[256, 10, 5]] + [[256, 3, 2]] * 4 + [[256, 2, 2]] * 2,
        conv_bias=False, normalize_waveform=False, embed_dim=256, num_layers=4, num_heads=4,
        ffn_dim=1024, layer_norm_first=True, pos_conv_kernel=64, pos_conv_groups=16,
        num_codevectors=64, codevector_dim=128, final_dim=128, layer_drop=0.0,
        feature_grad_mult=1.0,
    )
    params.update(overrides)
    return ModelConfig(**params)


PRESETS = {"base": base_config, "large": large_config, "small": small_config}


def preset(name: str, **overrides: Any) -> ModelConfig:
    try:
        return PRESETS[name](**overrides)
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
