"""vq-wav2vec (Baevski et al. 2019) and wav2vec (Schneider et al. 2019): the model and its builders.

    X --f (conv encoder)--> Z --q (Gumbel | k-means)--> Ẑ --g (causal conv aggregator)--> C
    loss: for k = 1..K, h_k(c_i) tells ẑ_{i+offset+k-1} from distractors (loss.py)

Unlike wav2vec 2.0 there is no masking and no Transformer: the context network is a causal
convolution stack over the *quantized* features, and the task is predicting future steps. The
discrete units (one index per group per 10 ms frame) are ``codes``; fairseq's
vq-wav2vec_featurize.py takes them from the encoder's output, as ``quantize`` does.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from torch import Tensor, nn

from training.model.components import normalize_waveform
from training.vq_wav2vec.components import ConvAggregator, ConvFeatureEncoder
from training.vq_wav2vec.config import VQWav2VecConfig, tiny_vq_wav2vec_config, vq_wav2vec_config
from training.vq_wav2vec.loss import FuturePredictions, LossOutput, PredictionOutput, vq_wav2vec_loss
from training.vq_wav2vec.quantizers import GumbelQuantizer, KmeansQuantizer, QuantizerOutput


class VQWav2VecOutput(NamedTuple):
    features: Tensor                      # z, the encoder's output [B, T, C]
    quantized: Tensor                     # ẑ [B, T, C_q] (z itself without a quantizer)
    context: Tensor                       # c, the aggregator's output [B, T, C_agg]
    lengths: Optional[Tensor]             # valid frames per row [B], or None (all valid)
    quantizer: Optional[QuantizerOutput]  # codes [B, T, G], perplexities, k-means loss
    predictions: PredictionOutput         # scores of targets and distractors per step


class VQWav2VecModel(nn.Module):
    """f, q, g and the step predictors h_k. Initialized as fairseq's (PyTorch's defaults for the
    convolutions, the quantizers' own inits); imported checkpoints overwrite all of it."""

    def __init__(self, config: VQWav2VecConfig) -> None:
        super().__init__()
        self.config = config
        affine = not config.non_affine_group_norm
        self.feature_extractor = ConvFeatureEncoder(
            config.conv_feature_layers, dropout=0.0, log_compression=config.log_compression,
            skip_connections=config.skip_connections_feat, residual_scale=config.residual_scale,
            affine=affine, activation=config.activation,
        )
        embed = config.embed_dim
        self.quantizer: Optional[nn.Module]
        if config.vq_type == "gumbel":
            self.quantizer = GumbelQuantizer(
                embed, config.vq_vars, config.vq_groups, config.quantized_dim, config.combine_groups,
                depth=config.vq_depth, hidden_factor=2, activation=config.activation,
                temperature=tuple(config.vq_temp),  # type: ignore[arg-type]
            )
        elif config.vq_type == "kmeans":
            self.quantizer = KmeansQuantizer(
                embed, config.vq_vars, config.vq_groups, config.quantized_dim, config.combine_groups,
                gamma=config.vq_gamma,
            )
        else:
            self.quantizer = None
        aggregator_in = config.quantized_dim if self.quantizer is not None else embed
        self.aggregator = ConvAggregator(
            config.conv_aggregator_layers, aggregator_in, dropout=config.dropout,
            skip_connections=config.skip_connections_agg, residual_scale=config.residual_scale,
            affine=affine, bias=config.agg_conv_bias, zero_pad=config.agg_zero_pad,
            activation=config.activation,
        )
        self.predictions = FuturePredictions(
            self.aggregator.out_channels, aggregator_in, config.prediction_steps, config.num_negatives,
            config.cross_sample_negatives, config.sample_distance, config.dropout, config.prediction_offset,
        )
        self.dropout_features = nn.Dropout(config.dropout_features)
        self.dropout_agg = nn.Dropout(config.dropout_agg)

    # ------------------------------------------------------------------ geometry
    @property
    def receptive_field(self) -> int:
        return self.feature_extractor.receptive_field

    @property
    def hop_length(self) -> int:
        return self.feature_extractor.hop_length

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        return self.feature_extractor.output_lengths(lengths)

    def set_num_updates(self, num_updates: int) -> None:
        """The Gumbel temperature τ of update n (no-op for the other quantizers)."""
        if isinstance(self.quantizer, GumbelQuantizer):
            self.quantizer.set_num_updates(num_updates)

    # ------------------------------------------------------------------ passes
    def encode(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Raw 16 kHz audio [B, L] -> z [B, C, T] (the convolutions' layout), frame lengths."""
        if self.config.normalize_waveform:
            waveforms = normalize_waveform(waveforms, lengths)
        return self.feature_extractor(waveforms, lengths)

    def quantize(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """The discrete units: codes [B, T, G] (index i_g of each group), frame lengths.

        In eval mode: Gumbel argmax of the scores without noise, k-means the nearest codeword.
        """
        if self.quantizer is None:
            raise RuntimeError("this wav2vec model has no quantizer (vq_type='none')")
        z, frame_lengths = self.encode(waveforms, lengths)
        return self.quantizer(z, frame_lengths).codes, frame_lengths

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None,
                negative_indices: Optional[Tensor] = None,
                gumbel_noise: Optional[Tensor] = None) -> VQWav2VecOutput:
        """waveforms [B, L] raw 16 kHz audio, lengths [B] valid samples (None: all valid).

        negative_indices ([B, N', T], see ``sample_negative_indices``) and gumbel_noise
        ([B, T, G, V]) replace the random draws (tests compare with fairseq with them).
        """
        z, frame_lengths = self.encode(waveforms, lengths)
        q_out: Optional[QuantizerOutput] = None
        quantized = z
        if isinstance(self.quantizer, GumbelQuantizer):
            q_out = self.quantizer(z, frame_lengths, gumbel_noise)
            quantized = q_out.quantized
        elif self.quantizer is not None:
            q_out = self.quantizer(z, frame_lengths)
            quantized = q_out.quantized
        context, _ = self.aggregator(self.dropout_features(quantized), frame_lengths)
        context = self.dropout_agg(context)
        predictions = self.predictions(context, quantized, frame_lengths, negative_indices)
        return VQWav2VecOutput(z.transpose(1, 2), quantized.transpose(1, 2), context.transpose(1, 2),
                               frame_lengths, q_out, predictions)

    def loss(self, output: VQWav2VecOutput) -> LossOutput:
        """The training objective of ``output`` with this model's criterion settings."""
        c = self.config
        return vq_wav2vec_loss(output.predictions, output.quantizer, c.infonce, c.balanced_classes, c.loss_weights)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_vq_wav2vec(config: VQWav2VecConfig) -> VQWav2VecModel:
    return VQWav2VecModel(config)


def vq_wav2vec(quantizer: str = "gumbel", **overrides: Any) -> VQWav2VecModel:
    """The paper's vq-wav2vec (34 M parameters with the Gumbel quantizer): ``quantizer="gumbel"``
    or ``"kmeans"``, configured as fairseq's published vq-wav2vec.pt / vq-wav2vec_kmeans.pt."""
    return VQWav2VecModel(vq_wav2vec_config(quantizer, **overrides))


def vq_wav2vec_tiny(quantizer: str = "gumbel", **overrides: Any) -> VQWav2VecModel:
    """A few ten thousand parameters for CPU tests (``tiny_vq_wav2vec_config``)."""
    return VQWav2VecModel(tiny_vq_wav2vec_config(quantizer, **overrides))

