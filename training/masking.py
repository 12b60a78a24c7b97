"""Span masks over time (the paper's masking, section 3.1) and over channels (fine-tuning).

Time masking: every valid frame of an utterance is a span start with probability p (fairseq's
``mask_prob``): the number of starts is ``int(p · L / M + u)`` with ``u ~ U[0, 1)`` (probabilistic
rounding, as fairseq does), at least ``min_masks`` (2), and the M = ``mask_length`` frames from each
start are masked. Starts are drawn without replacement among the positions whose span fits in the
utterance's *valid* frames, so padding is never masked. Spans may overlap (as in the paper:
with p=0.65 and M=10 about half of the frames end up masked).

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


def span_mask(lengths: Tensor, max_length: int, mask_prob: float, mask_length: int,
              min_masks: int = 0, generator: Optional[torch.Generator] = None) -> Tensor:
    """Random spans over the last axis.

    Args:
        lengths: [B] valid positions per row (padding beyond them is never masked).
        max_length: T, the padded length.
        mask_prob: p, probability of each valid position starting a span.
        mask_length: M, span length.
        min_masks: minimum number of spans per row (fewer only if fewer start positions exist).
        generator: RNG (on the same device as ``lengths`` or on the CPU).

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
    return mask[:, :max_length]


def time_mask(frame_lengths: Tensor, num_frames: int, mask_prob: float, mask_length: int,
              min_masks: int = 2, generator: Optional[torch.Generator] = None) -> Tensor:
    """[B, T] time-step mask for pre-training / fine-tuning (padding excluded)."""
    return span_mask(frame_lengths, num_frames, mask_prob, mask_length, min_masks, generator)


def channel_mask(batch_size: int, num_channels: int, mask_prob: float, mask_length: int,
                 device: torch.device | str = "cpu", generator: Optional[torch.Generator] = None) -> Tensor:
    """[B, C] channel mask (fairseq's ``mask_channel_*``): spans over the feature dimension,
    one draw per utterance, applied to every time step of it."""
    lengths = torch.full((batch_size,), num_channels, dtype=torch.long, device=torch.device(device))
    return span_mask(lengths, num_channels, mask_prob, mask_length, 0, generator)
