"""The future-step prediction task of wav2vec / vq-wav2vec (Schneider et al. 2019, section 2).

For each step k = 1..K, a step-specific affine map h_k(c_i) = W_k c_i + b_k of the context
predicts the (quantized) features ``offset + k - 1`` frames ahead, and is trained to tell the
true one from distractors z̃ drawn from the same utterance:

    L_k = - Σ_i [ log σ(ẑ_{i+k}ᵀ h_k(c_i)) + λ E_{z̃ ~ p_n} log σ(-z̃ᵀ h_k(c_i)) ]

with λ E estimated by the sum over N distractors (binary cross-entropy with logits, summed:
fairseq's ``Wav2vecCriterion``), or with ``infonce`` the cross-entropy of picking the true one
among {ẑ_{i+k}} ∪ distractors. ``offset`` (fairseq's ``offset="auto"``: ceil(receptive field /
hop)) keeps the first target's receptive field clear of c_i's. The W_k are fairseq's ``ConvTranspose2d(C_agg, C, (1, K))`` (``project_to_steps``).

The total (``vq_wav2vec_loss``) adds the quantizer's extra term times its weight and the sample
size (the number of positives), as fairseq's criterion does: k-means ‖sg(z) - ẑ‖² + γ‖z - sg(ẑ)‖²
(weight 1 for the published model), Gumbel (G·V - prob_perplexity) when a weight is given.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.model.components import lengths_to_mask
from training.vq_wav2vec.quantizers import QuantizerOutput


def sample_negative_indices(batch: int, frames: int, lengths: Optional[Tensor], num_negatives: int,
                            cross_sample_negatives: int = 0, sample_distance: Optional[int] = None,
                            device: Optional[torch.device] = None,
                            generator: Optional[torch.Generator] = None) -> Tensor:
    """Distractor positions for every target frame: ``[B, N + N_cross, T]`` indices into the
    ``B·T`` frames of the batch flattened row by row (row b's frame t is ``b·T + t``).

    The first N of frame t of row b come uniformly from the other valid frames of row b (the
    frame itself excluded, as fairseq; with ``sample_distance``, from its first
    min(L_b, sample_distance) frames); the N_cross others uniformly from the valid frames of the
    whole batch except the frame itself. Uses torch's RNG (or ``generator``).
    """
    device = device if device is not None else (lengths.device if lengths is not None else None)
    if lengths is None:
        lengths = torch.full((batch,), frames, dtype=torch.long, device=device)
    lengths = lengths.to(torch.long)
    t = torch.arange(frames, device=device)
    row_start = torch.arange(batch, device=device) * frames
    parts = []
    if num_negatives > 0:
        high = lengths if sample_distance is None else lengths.clamp(max=sample_distance)
        span = (high - 1).clamp(min=1).view(batch, 1, 1).to(torch.float64)
        u = torch.rand(batch, num_negatives, frames, generator=generator, device=device, dtype=torch.float64)
        idx = (u * span).floor().to(torch.long)
        idx = idx + (idx >= t.view(1, 1, -1)).to(torch.long)          # skip the frame itself
        parts.append(idx + row_start.view(-1, 1, 1))
    if cross_sample_negatives > 0:
        starts = torch.cumsum(lengths, 0) - lengths                       # first valid index of each row
        total = lengths.sum()
        own = (starts.view(-1, 1) + t.view(1, -1)).unsqueeze(1)          # [B, 1, T] own valid index
        u = torch.rand(batch, cross_sample_negatives, frames, generator=generator, device=device, dtype=torch.float64)
        r = (u * (total - 1).clamp(min=1).to(torch.float64)).floor().to(torch.long)
        r = r + (r >= own).to(torch.long)
        r = r.clamp(max=total - 1)
        row = torch.searchsorted(torch.cumsum(lengths, 0), r, right=True).clamp(max=batch - 1)
        parts.append(row * frames + (r - starts[row]))
    if not parts:
        raise ValueError("the prediction task needs num_negatives > 0 or cross_sample_negatives > 0")
    return torch.cat(parts, dim=1)


class PredictionOutput(NamedTuple):
    scores: list[Tensor]            # per step k: [B, 1 + N, T - offset_k] logits ẑᵀh_k(c); index 0 the true target
    valid: list[Optional[Tensor]]   # per step k: [B, T - offset_k] bool, the target lies in the row; None: all
    num_negatives: int              # N (same-utterance distractors; the balanced-classes weight is 1/N)


class FuturePredictions(nn.Module):
    """h_k for k = 1..K and the scores of every target and distractor (fairseq's
    ``Wav2VecPredictionsModel``)."""

    def __init__(self, in_dim: int, out_dim: int, prediction_steps: int, num_negatives: int,
                 cross_sample_negatives: int = 0, sample_distance: Optional[int] = None,
                 dropout: float = 0.0, offset: int = 1) -> None:
        super().__init__()
        self.prediction_steps = prediction_steps
        self.num_negatives = num_negatives
        self.cross_sample_negatives = cross_sample_negatives
        self.sample_distance = sample_distance
        self.offset = offset
        # Weight [C_agg, C, 1, K]: W_k = weight[:, :, 0, k]ᵀ; one bias shared by the K steps.
        self.project_to_steps = nn.ConvTranspose2d(in_dim, out_dim, (1, prediction_steps))
        self.dropout = nn.Dropout(dropout)

    def forward(self, context: Tensor, targets: Tensor, lengths: Optional[Tensor] = None,
                negative_indices: Optional[Tensor] = None) -> PredictionOutput:
        """context c [B, C_agg, T], targets ẑ [B, C, T], lengths [B] valid frames or None;
        negative_indices: ``[B, N', T]`` (``sample_negative_indices``) to use instead of drawing."""
        b, c, t = targets.shape
        if negative_indices is None:
            negative_indices = sample_negative_indices(
                b, t, lengths, self.num_negatives, self.cross_sample_negatives, self.sample_distance,
                device=targets.device)
        flat = targets.transpose(1, 2).reshape(b * t, c)
        negatives = flat[negative_indices.reshape(-1)].view(b, -1, t, c).permute(0, 1, 3, 2)   # [B, N', C, T]
        candidates = torch.cat([targets.unsqueeze(1), negatives], dim=1)                       # [B, 1+N', C, T]
        predictions = self.dropout(self.project_to_steps(context.unsqueeze(-1)))                # [B, C, T, K]
        steps = min(self.prediction_steps, t - self.offset)
        scores: list[Tensor] = []
        valid: list[Optional[Tensor]] = []
        for k in range(steps):
            off = k + self.offset
            scores.append(torch.einsum("bct,bnct->bnt", predictions[..., : t - off, k], candidates[..., off:]))
            # c_i's target ẑ_{i+off} must be a valid frame of its row.
            valid.append(None if lengths is None else lengths_to_mask(lengths - off, t - off))
        return PredictionOutput(scores, valid, self.num_negatives)


def prediction_loss(out: PredictionOutput, infonce: bool = False,
                    balanced_classes: bool = False) -> tuple[Tensor, Tensor]:
    """(Σ_k L_k summed over targets, sample size = the number of targets) in float32.

    BCE: each true target has label 1, each distractor 0 (weight 1/N with ``balanced_classes``);
    InfoNCE: cross-entropy with the true target as class 0.
    """
    device = out.scores[0].device if out.scores else None
    total = torch.zeros((), dtype=torch.float32, device=device)
    count = torch.zeros((), dtype=torch.float32, device=device)
    for scores, valid in zip(out.scores, out.valid):
        scores = scores.float()
        mask = torch.ones_like(scores[:, 0]) if valid is None else valid.to(scores.dtype)   # [B, T_k]
        if infonce:
            labels = torch.zeros(scores.shape[0], scores.shape[2], dtype=torch.long, device=scores.device)
            per = F.cross_entropy(scores, labels, reduction="none")                        # [B, T_k]
        else:
            labels = torch.zeros_like(scores)
            labels[:, 0] = 1.0
            weight = None
            if balanced_classes:
                weight = torch.full_like(scores, 1.0 / out.num_negatives)
                weight[:, 0] = 1.0
            per = F.binary_cross_entropy_with_logits(scores, labels, weight, reduction="none").sum(dim=1)
        total = total + (per * mask).sum()
        count = count + mask.sum()
    return total, count


class LossOutput(NamedTuple):
    loss: Tensor              # what is minimized: prediction + Σ weight · extra · sample size
    prediction_loss: Tensor   # Σ_k L_k
    extra_loss: Tensor        # the quantizer's term before weighting (0 when none)
    sample_size: Tensor       # number of true targets (fairseq's gradient denominator)


def vq_wav2vec_loss(predictions: PredictionOutput, quantizer: Optional[QuantizerOutput],
                    infonce: bool = False, balanced_classes: bool = False,
                    loss_weights: Optional[list] = None) -> LossOutput:
    """fairseq's ``Wav2vecCriterion`` for a wav2vec / vq-wav2vec model (reduce=True)."""
    pred, sample_size = prediction_loss(predictions, infonce, balanced_classes)
    extra = torch.zeros_like(pred)
    if quantizer is not None:
        if quantizer.kmeans_loss is not None:
            extra = quantizer.kmeans_loss.float()
        elif quantizer.prob_perplexity is not None:
            extra = (quantizer.num_vars - quantizer.prob_perplexity).float()
    loss = pred
    weight = float(loss_weights[0]) if loss_weights else 0.0
    if quantizer is not None and weight != 0.0:
        loss = loss + weight * extra * sample_size
    return LossOutput(loss, pred, extra, sample_size)
