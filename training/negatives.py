"""Distractor sampling for the contrastive task (wav2vec 2.0, section 3.2).

For every masked time step t of an utterance, K distractors are drawn uniformly (with
replacement, as fairseq and transformers do) from the *other* masked steps of the same
utterance: never t itself, never an unmasked step, never a step of another utterance.

Vectorized: masked steps of row b are numbered 0..m_b-1 in time order; for step number i we draw
j uniformly from 0..m_b-2 and skip over i (j >= i -> j+1), which keeps the draw uniform over the
m_b-1 allowed steps, then map numbers back to time indices.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def sample_negatives(mask: Tensor, num_negatives: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Distractor time indices.

    Args:
        mask: [B, T] bool, masked steps.
        num_negatives: K.
        generator: RNG (same device as ``mask`` or CPU).

    Returns:
        [B, T, K] long: time indices *within the same utterance*. Defined at masked steps; at
        unmasked steps (and in rows with fewer than 2 masked steps, where no distractor exists)
        every entry is the step itself, which the loss treats as "identical to the positive" and
        leaves out of the softmax.
    """
    b, t = mask.shape
    device = mask.device
    counts = mask.sum(dim=1)                                         # m_b
    # Time index of the i-th masked step of each row (unmasked steps sorted after them).
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # [B, T]
    rank = mask.long().cumsum(dim=1) - 1                             # i at masked steps

    gen_device = generator.device if generator is not None else device
    u = torch.rand((b, t, num_negatives), generator=generator, device=gen_device, dtype=torch.float64).to(device)
    allowed = (counts - 1).clamp(min=0).view(b, 1, 1).double()
    j = torch.floor(u * allowed).long()
    j = j + (j >= rank.unsqueeze(-1)).long()                        # skip the step itself
    j = torch.minimum(j, (counts - 1).clamp(min=0).view(b, 1, 1))
    negatives = torch.gather(order, 1, j.view(b, -1)).view(b, t, num_negatives)

    itself = torch.arange(t, device=device).view(1, t, 1).expand(b, t, num_negatives)
    usable = (mask & (counts >= 2).unsqueeze(1)).unsqueeze(-1)
    return torch.where(usable, negatives, itself)


def flat_negative_indices(negatives: Tensor) -> Tensor:
    """[B, T, K] per-utterance indices -> indices into the flattened [B*T] axis (transformers'
    ``sampled_negative_indices`` layout)."""
    b, t, _ = negatives.shape
    return negatives + (torch.arange(b, device=negatives.device) * t).view(b, 1, 1)
