"""Span masks and distractor sampling: structure, padding, and distributions (statistical)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.masking import channel_mask, span_mask, time_mask
from training.negatives import flat_negative_indices, sample_negatives


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    out, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def test_padding_is_never_masked_and_spans_are_whole():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([200, 57, 120, 31])
    for _ in range(50):
        mask = time_mask(lengths, 200, 0.65, 10, 2, gen)
        for b, n in enumerate(lengths.tolist()):
            assert not mask[b, n:].any(), "a padded frame was masked"
            # Unions of whole spans: every run is at least one span long.
            assert all(r >= 10 for r in runs(mask[b, :n]))


def test_at_least_two_spans():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([100, 40, 25])
    for _ in range(50):
        mask = time_mask(lengths, 100, 0.0, 10, 2, gen)  # p=0: only the minimum
        counts = mask.sum(1)
        # Two distinct starts: more than one span, at most two.
        assert ((counts >= 11) & (counts <= 20)).all(), counts


def test_masked_fraction_matches_transformers_sampler():
    """Independent reference: transformers' numpy span sampler, same p and M."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    np.random.seed(0)
    gen = torch.Generator().manual_seed(0)
    t, p, m = 150, 0.65, 10
    ours = np.mean([time_mask(torch.full((16,), t), t, p, m, 2, gen).float().mean().item() for _ in range(60)])
    ref = np.mean([_compute_mask_indices((16, t), p, m, min_masks=2).mean() for _ in range(60)])
    assert abs(ours - ref) < 0.02, (ours, ref)
    assert 0.4 < ours < 0.6  # the paper: about half the frames


def test_same_generator_state_same_mask_and_device_agnostic_shapes():
    lengths = torch.tensor([90, 60])
    a = time_mask(lengths, 90, 0.5, 5, 2, torch.Generator().manual_seed(3))
    b = time_mask(lengths, 90, 0.5, 5, 2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.bool and a.shape == (2, 90)


def test_channel_mask_spans_over_channels():
    gen = torch.Generator().manual_seed(2)
    cm = channel_mask(64, 256, 0.1, 16, generator=gen)
    assert cm.shape == (64, 256)
    frac = cm.float().mean().item()
    # Expected starts ≈ floor(0.1·256/16 + u) -> 1.6 spans of 16 over 256 channels ≈ 10% (less overlap).
    assert 0.05 < frac < 0.12
    assert all(r >= 16 for row in cm for r in runs(row))
    assert not channel_mask(4, 256, 0.0, 16).any()


def test_span_mask_rejects_bad_length():
    with pytest.raises(ValueError):
        span_mask(torch.tensor([10]), 10, 0.5, 0)


# ---------------------------------------------------------------- distractors
def test_distractors_are_other_masked_steps_of_the_same_utterance():
    gen = torch.Generator().manual_seed(4)
    lengths = torch.tensor([120, 80, 45])
    mask = time_mask(lengths, 120, 0.65, 10, 2, gen)
    neg = sample_negatives(mask, 100, gen)
    assert neg.shape == (3, 120, 100)
    rows, steps = mask.nonzero(as_tuple=True)
    chosen = neg[rows, steps]                                # [N, K]
    assert (chosen != steps.unsqueeze(1)).all(), "a distractor is the step itself"
    assert mask[rows.unsqueeze(1).expand_as(chosen), chosen].all(), "a distractor is an unmasked step"
    flat = flat_negative_indices(neg)[rows, steps]
    assert ((flat // 120) == rows.unsqueeze(1)).all(), "a distractor is from another utterance"


def test_distractors_are_uniform_over_the_allowed_steps():
    """Chi-square goodness of fit: for a fixed masked step, each of the other m-1 masked steps
    must be drawn with probability 1/(m-1). Fails for an off-by-one (a step never drawn, or
    drawn twice as often) or for a bias toward neighbours."""
    mask = torch.zeros(2, 60, dtype=torch.bool)
    mask[0, 5:15] = True
    mask[0, 30:42] = True        # m = 22 masked steps in row 0
    mask[1, 0:60:3] = True       # row 1: another pattern, must not leak into row 0
    gen = torch.Generator().manual_seed(5)
    k = 20000
    neg = sample_negatives(mask, k, gen)
    masked = mask[0].nonzero().squeeze(1)
    for step in (5, 14, 30, 41):                            # first, middle, last masked steps
        counts = torch.bincount(neg[0, step], minlength=60)[masked]
        others = masked != step
        assert counts[~others].item() == 0
        observed = counts[others].double()
        expected = k / others.sum().item()
        chi2 = ((observed - expected) ** 2 / expected).sum().item()
        dof = others.sum().item() - 1
        # p < 1e-4 threshold for chi-square with dof ≈ 20: about 52.4 (Wilson–Hilferty).
        z = 3.719
        limit = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
        assert chi2 < limit, f"step {step}: chi2 {chi2:.1f} >= {limit:.1f}"


def test_rows_with_too_few_masked_steps_point_at_themselves():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 3] = True
    mask[1, 2:5] = True
    neg = sample_negatives(mask, 7, torch.Generator().manual_seed(0))
    assert (neg[0, 3] == 3).all()
    assert set(neg[1, 2].tolist()) <= {3, 4}


# ---------------------------------------------------------------- require_same_masks (fairseq)
def test_require_same_masks_gives_every_row_the_smallest_count():
    """fairseq's compute_mask_indices(require_same_masks=True): rows keep a random subset of their
    masked steps, the smallest row's count; the spans themselves are drawn as without it."""
    lengths = torch.tensor([200, 57, 120, 31])
    for seed in range(20):
        free = time_mask(lengths, 200, 0.65, 10, 2, torch.Generator().manual_seed(seed))
        same = time_mask(lengths, 200, 0.65, 10, 2, torch.Generator().manual_seed(seed), require_same_masks=True)
        counts = same.sum(1)
        assert (counts == free.sum(1).min()).all(), (counts, free.sum(1))
        assert not (same & ~free).any(), "a step outside the drawn spans was masked"
        for b, n in enumerate(lengths.tolist()):
            assert not same[b, n:].any()
    # Equal lengths too (pre-training crops a batch to its shortest row): counts still equal.
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        mask = time_mask(torch.full((8,), 150), 150, 0.65, 10, 2, gen, require_same_masks=True)
        assert len(set(mask.sum(1).tolist())) == 1


def test_require_same_masks_drops_steps_uniformly():
    """The steps a row gives up are uniform over its masked steps (chi-square), not its last spans."""
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, 0:20] = True                 # 20 masked steps, must drop to 10
    mask[1, 5:15] = True                 # 10 masked steps
    from training.masking import same_count

    gen = torch.Generator().manual_seed(0)
    kept = torch.zeros(40)
    n = 4000
    for _ in range(n):
        m = same_count(mask, gen)
        assert m.sum(1).tolist() == [10, 10] and torch.equal(m[1], mask[1])
        kept += m[0].float()
    observed = kept[:20]
    p = 10 / 20                          # each step is kept with probability 1/2 in every draw
    # Σ (o − np)² / (np(1 − p)): the counts sum to 10n, so about chi-square with 19 dof.
    chi2 = ((observed - n * p) ** 2 / (n * p * (1 - p))).sum().item()
    assert chi2 < 43.8, chi2             # chi-square 19 dof, p = 1e-3
    assert kept[20:].sum() == 0


def test_require_same_masks_is_a_model_config_key():
    from training.config import ModelConfig
    from training.train_config import PretrainConfig, load_config

    assert ModelConfig().require_same_masks is True          # fairseq's default
    cfg = load_config(PretrainConfig, None, ["model.require_same_masks=false"])
    assert cfg.model.build().require_same_masks is False
