"""Span masks over time (the paper's masking, section 3.1) and over channels (fine-tuning).

Time masking: every valid frame of an utterance is a span start with probability p (fairseq's
``mask_prob``): the number of starts is ``int(p · L / M + u)`` with ``u ~ U[0, 1)`` (probabilistic
rounding, as fairseq does), at least ``min_masks`` (2), and the M = ``mask_length`` frames from each
start are masked. Starts are drawn without replacement among the positions whose span fits in the
utterance's *valid* frames, so padding is never masked. Spans may overlap (as in the paper:
with p=0.65 and M=10 about half of the frames end up masked).

``require_same_masks`` (fairseq's ``compute_mask_indices(require_same_masks=True)``, its default
for pre-training and fine-tuning): after the spans are drawn, every row keeps the same number of
masked steps, the smallest row's count; a row with more keeps a uniformly random subset of its
masked steps (so spans of it may be cut), as fairseq's ``rng.choice(mask_idc, target_len)``.

Everything is sampled on the tensors' device with an explicit ``torch.Generator`` and no Python
loop over the batch: per-row counts are handled by ranking random keys.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from training.model.components import lengths_to_mask


def _rand(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def same_count(mask: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Unmask random steps of each row until every row has as many masked steps as the row with
    the fewest (fairseq's ``require_same_masks``). [B, T] bool -> [B, T] bool, a subset of it."""
    if mask.shape[0] <= 1 or mask.shape[1] == 0:
        return mask
    counts = mask.sum(dim=1)
    target = counts.min()
    # Rank the masked steps of each row in a random order (unmasked steps last); keep the first `target`.
    keys = _rand(tuple(mask.shape), generator, mask.device).masked_fill(~mask, 2.0)
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(mask.shape[1], device=mask.device).expand_as(order))
    return mask & (rank < target)


def span_mask(lengths: Tensor, max_length: int, mask_prob: float, mask_length: int,
              min_masks: int = 0, generator: Optional[torch.Generator] = None,
              require_same_masks: bool = False) -> Tensor:
    """Random spans over the last axis.

    Args:
        lengths: [B] valid positions per row (padding beyond them is never masked).
        max_length: T, the padded length.
        mask_prob: p, probability of each valid position starting a span.
        mask_length: M, span length.
        min_masks: minimum number of spans per row (fewer only if fewer start positions exist).
        generator: RNG (on the same device as ``lengths`` or on the CPU).
        require_same_masks: give every row the smallest row's number of masked positions
            (``same_count``); the spans are drawn first, with the same draws as without it.

    Returns:
        [B, T] bool, True on masked positions.
    """
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    device = lengths.device
    b = lengths.shape[0]
    if b == 0 or max_length == 0 or (mask_prob <= 0 and min_masks <= 0):
        return torch.zeros(b, max_length, dtype=torch.bool, device=device)
    lengths = lengths.clamp(max=max_length)
    # Positions where a whole span still fits inside the valid frames.
    num_starts = (lengths - mask_length + 1).clamp(min=0)
    rounding = _rand((b,), generator, device)
    num_spans = torch.floor(mask_prob * lengths.double() / mask_length + rounding.double()).long()
    num_spans = torch.minimum(num_spans.clamp(min=min_masks), num_starts)

    # Draw starts without replacement: rank uniform keys, invalid positions sorted last.
    keys = _rand((b, max_length), generator, device)
    keys = keys.masked_fill(~lengths_to_mask(num_starts, max_length), 2.0)
    order = keys.argsort(dim=1)                                     # candidate starts, random order
    chosen = torch.arange(max_length, device=device).unsqueeze(0) < num_spans.unsqueeze(1)
    starts = order.masked_fill(~chosen, -1)                          # -1: not a span

    # Expand each start to its M positions, then scatter into the mask.
    offsets = torch.arange(mask_length, device=device)
    positions = starts.unsqueeze(-1) + offsets                       # [B, T, M]
    valid = (starts.unsqueeze(-1) >= 0).expand_as(positions)
    positions = positions.masked_fill(~valid, max_length)            # park unused ones in a spare column
    mask = torch.zeros(b, max_length + 1, dtype=torch.bool, device=device)
    mask.scatter_(1, positions.reshape(b, -1), True)
    mask = mask[:, :max_length]
    if require_same_masks:
        mask = same_count(mask, generator)
    return mask


def time_mask(frame_lengths: Tensor, num_frames: int, mask_prob: float, mask_length: int,
              min_masks: int = 2, generator: Optional[torch.Generator] = None,
              require_same_masks: bool = False) -> Tensor:
    """[B, T] time-step mask for pre-training / fine-tuning (padding excluded).

    Pass ``require_same_masks=config.require_same_masks`` (True in fairseq's recipes) to give
    every row of the batch the same number of masked steps."""
    return span_mask(frame_lengths, num_frames, mask_prob, mask_length, min_masks, generator, require_same_masks)


def channel_mask(batch_size: int, num_channels: int, mask_prob: float, mask_length: int,
                 device: torch.device | str = "cpu", generator: Optional[torch.Generator] = None,
                 require_same_masks: bool = False) -> Tensor:
    """[B, C] channel mask (fairseq's ``mask_channel_*``): spans over the feature dimension,
    one draw per utterance, applied to every time step of it. (fairseq's channel masks also go
    through ``compute_mask_indices`` with its default ``require_same_masks=True``.)"""
    lengths = torch.full((batch_size,), num_channels, dtype=torch.long, device=torch.device(device))
    return span_mask(lengths, num_channels, mask_prob, mask_length, 0, generator, require_same_masks)
