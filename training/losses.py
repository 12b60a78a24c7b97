"""The pre-training objective of wav2vec 2.0 (section 3.2): L = L_m + α·L_d (+ feature penalty).

* Contrastive loss L_m: for each masked step t, −log exp(sim(c_t, q_t)/κ) / Σ_{q̃∈Q_t} exp(sim(c_t, q̃)/κ)
  with cosine similarity, temperature κ, and Q_t = {q_t} ∪ K distractors. A distractor identical
  to q_t (same codebook entries) is left out of the softmax. Summed over masked steps.
* Diversity loss L_d = (G·V − Σ_g exp(H(p̄_g))) / (G·V), p̄_g the batch-averaged plain softmax
  (no Gumbel noise) of codebook g. fairseq multiplies it by the number of masked steps so it sums
  like L_m.
* Feature penalty: the mean of z² (conv features before LayerNorm), also multiplied by the number
  of masked steps (fairseq's ``features_pen`` · sample_size).

All functions work in float32 whatever the autocast dtype, like fairseq and transformers.

Logging as fairseq (``wav2vec_criterion.py``): the loss is reported per masked step in bits
(``nats_to_bits(total / num_masked)``, fairseq's ``loss / sample_size / math.log(2)``), and
beside ``prob_perplexity`` (of p̄, the diversity term's soft average) the ``code_perplexity`` of
the noise-free hard choices argmax(l) (``code_perplexity(QuantizerOutput.code_counts)``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class ContrastiveOutput(NamedTuple):
    loss: Tensor            # Σ over masked steps of the cross-entropy (scalar)
    logits: Tensor          # [N, 1+K] sim/κ, positive first, -inf where a distractor equals it
    num_masked: Tensor      # N (long scalar)
    correct: Tensor         # steps whose positive wins (ties with all-equal logits do not count)
    chance: Tensor          # Σ_t 1/|Q_t|: expected number correct for a random guesser
    identical: Tensor       # distractors equal to their positive (codebook collapse shows here)


def contrastive_logits(context: Tensor, targets: Tensor, mask: Tensor, negatives: Tensor,
                       temperature: float = 0.1) -> tuple[Tensor, Tensor]:
    """sim(c_t, ·)/κ at the masked steps.

    Args:
        context: [B, T, D] projected context c_t (``project_context``).
        targets: [B, T, D] projected quantized q_t (``project_q``).
        mask: [B, T] bool, masked steps.
        negatives: [B, T, K] distractor time indices within each utterance.
    Returns:
        (logits [N, 1+K] with -inf where a distractor equals the positive, that [N, K] bool).
    """
    b, t, d = targets.shape
    rows, steps = mask.nonzero(as_tuple=True)                       # N masked steps, time order
    flat = rows * t + steps
    flat_negatives = (rows.unsqueeze(1) * t + negatives[rows, steps]).reshape(-1)
    # index_select, not advanced indexing: its CPU backward sums repeated rows in a fixed order,
    # so a run is bit-reproducible (and resumable); indexing's backward is not.
    c = torch.index_select(context.reshape(b * t, -1), 0, flat).float()              # [N, D]
    targets_flat = targets.reshape(b * t, d)
    positive = torch.index_select(targets_flat, 0, flat).float()                     # [N, D]
    distractors = torch.index_select(targets_flat, 0, flat_negatives).float().view(len(flat), -1, d)  # [N, K, D]
    candidates = torch.cat([positive.unsqueeze(1), distractors], dim=1)       # [N, 1+K, D]
    logits = F.cosine_similarity(c.unsqueeze(1), candidates, dim=-1) / temperature
    identical = (distractors == positive.unsqueeze(1)).all(dim=-1)
    logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(identical, float("-inf"))], dim=1)
    return logits, identical


def contrastive_loss(context: Tensor, targets: Tensor, mask: Tensor, negatives: Tensor,
                     temperature: float = 0.1) -> ContrastiveOutput:
    """L_m summed over masked steps, with accuracy counts for logging."""
    logits, identical = contrastive_logits(context, targets, mask, negatives, temperature)
    n = logits.shape[0]
    target = torch.zeros(n, dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits, target, reduction="sum")
    with torch.no_grad():
        # fairseq's accuracy: the positive is the unique maximum (all-equal rows do not count).
        best = logits.argmax(dim=-1) == 0
        worst = logits.argmin(dim=-1) == 0
        correct = (best & ~worst).sum()
        chance = (1.0 / torch.isfinite(logits).sum(dim=-1).float()).sum()
    return ContrastiveOutput(loss, logits, torch.tensor(n, device=logits.device), correct, chance,
                             identical.sum())


def perplexity(probs: Tensor, eps: float = 1e-7) -> Tensor:
    """Σ_g exp(H(p_g)) for [G, V] distributions (the quantizer's prob/code perplexity)."""
    probs = probs.float()
    return torch.exp(-(probs * torch.log(probs + eps)).sum(dim=-1)).sum()


def code_perplexity(code_counts: Tensor) -> Tensor:
    """fairseq's ``code_perplexity``: Σ_g exp(H) of the histogram of argmax(l) (no Gumbel noise).

    code_counts: [G, V] counts of frames per chosen entry (``QuantizerOutput.code_counts``),
    possibly summed over processes first; each group is normalized by its own total."""
    counts = code_counts.float()
    return perplexity(counts / counts.sum(dim=-1, keepdim=True).clamp(min=1))


LN2 = math.log(2.0)


def nats_to_bits(value):
    """A loss in nats -> bits (fairseq logs ``loss / sample_size / math.log(2)``). Works on
    floats and tensors."""
    return value / LN2


def diversity_loss(avg_probs: Tensor) -> Tensor:
    """L_d = (G·V − Σ_g exp(H(p̄_g))) / (G·V) for the [G, V] batch-averaged plain softmax."""
    num_entries = avg_probs.numel()
    return (num_entries - perplexity(avg_probs)) / num_entries


def feature_penalty(conv_features: Tensor, frame_lengths: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """(Σ z², number of summed elements) over valid frames: the mean of z² is their ratio.

    Returned as a sum and a count so that several processes can share one mean exactly.
    """
    squares = conv_features.float().pow(2)
    if frame_lengths is None:
        return squares.sum(), torch.tensor(squares.numel(), dtype=torch.float32, device=squares.device)
    t = conv_features.shape[1]
    valid = (torch.arange(t, device=squares.device).unsqueeze(0) < frame_lengths.unsqueeze(1)).float()
    total = (squares * valid.unsqueeze(-1)).sum()
    return total, valid.sum() * conv_features.shape[-1]
