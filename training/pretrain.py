"""Self-supervised pre-training: one forward pass of the paper's objective (section 3).

``draw_pretrain_inputs`` samples what is random about a step apart from dropout (span mask,
distractors, Gumbel noise) from one generator; ``pretrain_terms`` runs the model and computes
the loss terms. Both are pure functions of their arguments, which the tests use to compare with
transformers and to replay a distributed step in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from training.losses import ContrastiveOutput, contrastive_loss, feature_penalty
from training.masking import time_mask
from training.model import Wav2Vec2Model
from training.model.quantizer import QuantizerOutput
from training.negatives import sample_negatives


@dataclass
class PretrainDraws:
    """The random choices of one pre-training step (besides dropout)."""

    mask: Tensor                           # [B, T] bool, masked time steps
    negatives: Tensor                      # [B, T, K] distractor time indices (same utterance)
    gumbel_noise: Optional[Tensor] = None  # [B, T, G, V] Gumbel(0, 1) noise for the quantizer

    def to(self, device: torch.device) -> "PretrainDraws":
        noise = self.gumbel_noise.to(device) if self.gumbel_noise is not None else None
        return PretrainDraws(self.mask.to(device), self.negatives.to(device), noise)

    @staticmethod
    def cat(draws: list["PretrainDraws"]) -> "PretrainDraws":
        """Join the draws of equally long batches (a distributed step replayed in one process)."""
        noise = None
        if all(d.gumbel_noise is not None for d in draws):
            noise = torch.cat([d.gumbel_noise for d in draws])
        return PretrainDraws(torch.cat([d.mask for d in draws]), torch.cat([d.negatives for d in draws]), noise)


def draw_pretrain_inputs(model: Wav2Vec2Model, frame_lengths: Tensor, num_frames: int, num_negatives: int,
                         generator: Optional[torch.Generator], with_noise: bool = True) -> PretrainDraws:
    """Span mask (p, M, ≥ min spans, padding excluded), K distractors per masked step and the
    quantizer's Gumbel noise, all on ``frame_lengths``' device."""
    cfg = model.config
    device = frame_lengths.device
    mask = time_mask(frame_lengths, num_frames, cfg.mask_prob, cfg.mask_length, cfg.mask_min_masks, generator)
    negatives = sample_negatives(mask, num_negatives, generator)
    noise = None
    if with_noise:
        shape = (frame_lengths.shape[0], num_frames, cfg.num_codevector_groups, cfg.num_codevectors)
        gen_device = generator.device if generator is not None else device
        uniform = torch.rand(shape, generator=generator, device=gen_device).to(device)
        # Gumbel(0, 1) = -log(Exponential(1)) = -log(-log U); clamp keeps U off 0 and 1.
        noise = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
    return PretrainDraws(mask, negatives, noise)


class PretrainTerms(NamedTuple):
    contrastive: ContrastiveOutput
    quantizer: QuantizerOutput        # avg_probs over the masked steps (the diversity term's p̄)
    num_masked_frames: Tensor         # float count of frames the quantizer statistics cover
    penalty_sum: Tensor               # Σ z² over valid frames
    penalty_count: Tensor             # number of elements in that sum


def frame_lengths_of(model: Wav2Vec2Model, waveforms: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, int]:
    """Frame lengths and padded frame count of a batch without running the model."""
    if lengths is None:
        lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long, device=waveforms.device)
    num_frames = int(model.frame_lengths(torch.tensor([waveforms.shape[1]])).item())
    return model.frame_lengths(lengths), num_frames


def pretrain_terms(model: Wav2Vec2Model, waveforms: Tensor, lengths: Optional[Tensor],
                   draws: PretrainDraws, temperature: float = 0.1) -> PretrainTerms:
    """Context c from masked features, targets q from the unmasked ones, and the loss terms."""
    if model.quantizer is None or model.project_q is None or model.project_context is None:
        raise ValueError("pre-training needs a model built with quantizer=True")
    features = model.extract(waveforms, lengths, draws.mask)
    context = model.project_context(features.context)
    quantizer_input = model.dropout_features(features.normed_features)
    q = model.quantizer(quantizer_input, frame_mask=draws.mask,
                        gumbel_noise=draws.gumbel_noise if model.quantizer.training else None)
    targets = model.project_q(q.quantized)
    contrastive = contrastive_loss(context, targets, draws.mask, draws.negatives, temperature)
    penalty_sum, penalty_count = feature_penalty(features.conv_features, features.lengths)
    return PretrainTerms(contrastive, q, draws.mask.sum().float(), penalty_sum, penalty_count)


class PretrainObjective(nn.Module):
    """The model plus its pre-training forward, as one module DistributedDataParallel can wrap."""

    def __init__(self, model: Wav2Vec2Model, temperature: float = 0.1) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor], mask: Tensor, negatives: Tensor,
                gumbel_noise: Optional[Tensor] = None) -> PretrainTerms:
        # Plain tensor arguments: DistributedDataParallel moves and inspects them.
        draws = PretrainDraws(mask, negatives, gumbel_noise)
        return pretrain_terms(self.model, waveforms, lengths, draws, self.temperature)
