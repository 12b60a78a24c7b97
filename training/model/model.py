"""The wav2vec 2.0 model and one builder per architecture."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn

from training.config import ModelConfig, base_config, large_config, small_config
from training.model.components import (
    FeatureEncoder,
    FeatureProjection,
    GradMultiply,
    TransformerEncoder,
    normalize_waveform,
)
from training.model.quantizer import GumbelVectorQuantizer


def ctc_head(embed_dim: int, vocab_size: int) -> nn.Linear:
    """The fine-tuning head d -> vocabulary: fairseq's ``Linear`` of wav2vec2_asr.py
    (``xavier_uniform_`` weight, bias 0), not PyTorch's default init."""
    head = nn.Linear(embed_dim, vocab_size)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class Features(NamedTuple):
    """Everything the losses need from one pass (see ``Wav2Vec2Model.extract``)."""

    conv_features: Tensor           # z before the feature LayerNorm [B, T, C]
    normed_features: Tensor         # LayerNorm(z): the quantizer's input [B, T, C]
    context: Tensor                 # c from the Transformer [B, T, d]
    lengths: Optional[Tensor]       # valid frames per row [B], or None (all valid)
    feature_penalty: Tensor         # mean of z², before LayerNorm (scalar)


class Wav2Vec2Model(nn.Module):
    """wav2vec 2.0: feature encoder f, feature projection, Transformer g; optionally a CTC head
    over the vocabulary (fine-tuning) and the quantizer with its projections (pre-training).

    The same network describes the wav2vec 2.0 family's other published models through
    ``ModelConfig``'s switches (builders below): HuBERT (Hsu et al., 2021; the same graph,
    optionally without the feature projection's LayerNorm), WavLM (Chen et al., 2022; gated
    relative position bias in every block), data2vec-audio (Baevski et al., 2022; a stack of
    plain positional convolutions) and MMS (Pratap et al., 2023; a language adapter per block).

    Initialization follows fairseq (a fresh model trains like fairseq's; imported checkpoints
    overwrite all of it): conv encoder ``kaiming_normal_``; Transformer blocks BERT-style
    (N(0, 0.02), bias 0); positional convolution N(0, sqrt(4/(k·d))); feature projection,
    ``project_q`` and ``project_context`` PyTorch's default (fairseq's ``post_extract_proj``,
    ``project_q``, ``final_proj``); mask embedding U[0, 1); quantizer scores W ~ N(0, 1), bias 0,
    codebook U[0, 1); CTC head ``xavier_uniform_``, bias 0.

    ``forward(waveforms, lengths)`` returns ``(logits, frame_lengths)`` with the CTC head, or
    ``(context, frame_lengths)`` without; ``frame_lengths`` is None when ``lengths`` is.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config.conv_layers, config.extractor_mode, config.conv_bias)
        conv_dim = self.feature_extractor.out_channels
        self.feature_projection = FeatureProjection(conv_dim, config.embed_dim, config.dropout_input,
                                                    config.layer_norm_eps, config.feature_projection_layer_norm)
        self.encoder = TransformerEncoder(
            embed_dim=config.embed_dim, num_layers=config.num_layers, num_heads=config.num_heads,
            ffn_dim=config.ffn_dim, dropout=config.dropout, attention_dropout=config.attention_dropout,
            activation_dropout=config.activation_dropout, layer_norm_first=config.layer_norm_first,
            layer_drop=config.layer_drop, pos_conv_kernel=config.pos_conv_kernel,
            pos_conv_groups=config.pos_conv_groups, eps=config.layer_norm_eps,
            pos_conv_depth=config.pos_conv_depth, relative_position_buckets=config.relative_position_buckets,
            relative_position_max_distance=config.relative_position_max_distance, adapter_dim=config.adapter_dim,
        )
        # Learned embedding that replaces masked time steps (the paper's "M").
        self.mask_embedding = nn.Parameter(torch.empty(config.embed_dim).uniform_())
        self.final_dropout = nn.Dropout(config.final_dropout)
        self.ctc_head: Optional[nn.Linear] = (
            ctc_head(config.embed_dim, config.vocab_size) if config.vocab_size else None
        )
        if config.quantizer:
            self.dropout_features = nn.Dropout(config.dropout_features)
            self.quantizer: Optional[GumbelVectorQuantizer] = GumbelVectorQuantizer(
                conv_dim, config.num_codevector_groups, config.num_codevectors, config.codevector_dim
            )
            self.project_q: Optional[nn.Linear] = nn.Linear(config.codevector_dim, config.final_dim)
            self.project_context: Optional[nn.Linear] = nn.Linear(config.embed_dim, config.final_dim)
        else:
            self.quantizer = self.project_q = self.project_context = None

    # ------------------------------------------------------------------ geometry
    @property
    def receptive_field(self) -> int:
        return self.feature_extractor.receptive_field

    @property
    def hop_length(self) -> int:
        return self.feature_extractor.hop_length

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        return self.feature_extractor.output_lengths(lengths)

    # ------------------------------------------------------------------ passes
    def encode_features(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Raw audio [B, L] -> conv features z [B, T, C] (before LayerNorm), frame lengths.

        Applies the model's own input normalization (``normalize_waveform``) over valid samples.
        """
        if self.config.normalize_waveform:
            waveforms = normalize_waveform(waveforms, lengths)
        mult = self.config.feature_grad_mult
        if self.training and mult == 0:
            with torch.no_grad():
                return self.feature_extractor(waveforms, lengths)
        features, frame_lengths = self.feature_extractor(waveforms, lengths)
        if self.training and mult != 1.0:
            features = GradMultiply.apply(features, mult)
        return features, frame_lengths

    def contextualize(self, features: Tensor, lengths: Optional[Tensor] = None,
                      mask: Optional[Tensor] = None, channel_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Conv features z -> (context c [B, T, d], normed features).

        mask: [B, T] bool, time steps replaced by the learned mask embedding.
        channel_mask: [B, d] bool, channels zeroed (fine-tuning's channel masking).
        """
        projected, normed = self.feature_projection(features)
        if channel_mask is not None:
            projected = projected.masked_fill(channel_mask.unsqueeze(1), 0.0)
        if mask is not None:
            projected = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(projected.dtype), projected)
        return self.encoder(projected, lengths), normed

    def extract(self, waveforms: Tensor, lengths: Optional[Tensor] = None,
                mask: Optional[Tensor] = None, channel_mask: Optional[Tensor] = None) -> Features:
        """One full pass that keeps what pre-training and fine-tuning losses need."""
        features, frame_lengths = self.encode_features(waveforms, lengths)
        feature_penalty = features.float().pow(2).mean()
        context, normed = self.contextualize(features, frame_lengths, mask, channel_mask)
        return Features(features, normed, context, frame_lengths, feature_penalty)

    def ctc_logits(self, context: Tensor) -> Tensor:
        if self.ctc_head is None:
            raise RuntimeError("this model has no CTC head (vocab_size is not set)")
        return self.ctc_head(self.final_dropout(context))

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """waveforms [B, L] raw 16 kHz audio, lengths [B] valid samples (None: all valid)."""
        features, frame_lengths = self.encode_features(waveforms, lengths)
        context, _ = self.contextualize(features, frame_lengths)
        if self.ctc_head is not None:
            return self.ctc_logits(context), frame_lengths
        return context, frame_lengths

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(config: ModelConfig) -> Wav2Vec2Model:
    return Wav2Vec2Model(config)


def wav2vec2_base(**overrides: Any) -> Wav2Vec2Model:
    """BASE (95 M without heads). Pass ``vocab_size=N`` for a CTC head, ``quantizer=True`` for pre-training."""
    return Wav2Vec2Model(base_config(**overrides))


def wav2vec2_large(**overrides: Any) -> Wav2Vec2Model:
    """LARGE / LV-60 (317 M without heads): pre-LN, LayerNorm conv blocks, normalized input."""
    return Wav2Vec2Model(large_config(**overrides))


def wav2vec2_small(**overrides: Any) -> Wav2Vec2Model:
    """A few million parameters for CPU training and tests."""
    return Wav2Vec2Model(small_config(**overrides))


def hubert_base(**overrides: Any) -> Wav2Vec2Model:
    """HuBERT BASE (Hsu et al., 2021): BASE's graph (GroupNorm conv encoder, post-LN, 12 x 768)."""
    return Wav2Vec2Model(base_config(**{"family": "hubert", **overrides}))


def hubert_large(**overrides: Any) -> Wav2Vec2Model:
    """HuBERT LARGE: LARGE's graph (LayerNorm conv encoder, pre-LN, 24 x 1024)."""
    return Wav2Vec2Model(large_config(**{"family": "hubert", **overrides}))


def wavlm_base(**overrides: Any) -> Wav2Vec2Model:
    """WavLM BASE (Chen et al., 2022): BASE with a gated relative position bias (320 buckets,
    max distance 800) shared by all blocks."""
    params: dict[str, Any] = dict(family="wavlm", relative_position_buckets=320, relative_position_max_distance=800)
    return Wav2Vec2Model(base_config(**{**params, **overrides}))


def wavlm_large(**overrides: Any) -> Wav2Vec2Model:
    """WavLM LARGE: LARGE with the gated relative position bias."""
    params: dict[str, Any] = dict(family="wavlm", relative_position_buckets=320, relative_position_max_distance=800)
    return Wav2Vec2Model(large_config(**{**params, **overrides}))


def data2vec_audio_base(**overrides: Any) -> Wav2Vec2Model:
    """data2vec-audio BASE (Baevski et al., 2022): LayerNorm conv encoder with bias, post-LN
    12 x 768, five plain positional convolutions of kernel 19 (16 groups), normalized input."""
    params: dict[str, Any] = dict(family="data2vec_audio", extractor_mode="layer_norm", conv_bias=True,
                                  normalize_waveform=True, pos_conv_depth=5, pos_conv_kernel=19)
    return Wav2Vec2Model(base_config(**{**params, **overrides}))


def mms_1b(adapter_dim: int = 16, **overrides: Any) -> Wav2Vec2Model:
    """MMS-1B (Pratap et al., 2023): XLS-R 1B (48 x 1280, pre-LN, FFN 5120, 16 heads) with a
    language adapter of ``adapter_dim`` in each block."""
    params: dict[str, Any] = dict(embed_dim=1280, num_layers=48, ffn_dim=5120, adapter_dim=adapter_dim, final_dim=1024)
    return Wav2Vec2Model(large_config(**{**params, **overrides}))
