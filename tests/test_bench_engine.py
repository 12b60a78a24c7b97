"""The engine benchmark's FLOP accounting (bench/bench_engine.py), against a hand count and
torch's own FLOP counter. The benchmark's timings are not tested here (benchmarks, not tests)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.bench_engine import conv_gflop
from training.model import wav2vec2_base


def test_conv_gflop_hand_worked():
    # 11 samples -> (11 - 3) // 2 + 1 = 5 frames x 4 channels x (1 x 3) taps: 2 * 60 = 120 FLOP;
    # then (5 - 2) // 2 + 1 = 2 frames x 2 channels x (4 x 2) taps: 2 * 32 = 64 FLOP.
    assert conv_gflop([(4, 3, 2), (2, 2, 2)], 11) == pytest.approx(184e-9, rel=1e-12)


def test_conv_gflop_matches_torch_flop_counter_on_base():
    model = wav2vec2_base().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.feature_extractor(torch.zeros(1, 16000))
    convs = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
    assert conv_gflop(model.config.conv_layers, 16000) == pytest.approx(convs / 1e9, rel=1e-9)
