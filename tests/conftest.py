"""Shared fixtures: small transformers reference models saved to disk, synthetic audio."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

# The automatic precision check (w2v_serve.precision.ensure_precision_record) would run once per
# new model directory; tests pin their precision instead, and tests/test_auto_precision.py turns it on.
os.environ.setdefault("W2V_PRECISION_CHECK", "0")

# A character vocabulary in transformers' layout: blank <pad> at 0, word delimiter |.
HF_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R"]

ARCHS = {
    # BASE-style: GroupNorm in the first conv block, post-LN Transformer.
    "group": dict(feat_extract_norm="group", do_stable_layer_norm=False),
    # LARGE-style "stable layer norm": LayerNorm in every conv block, pre-LN Transformer.
    "layer": dict(feat_extract_norm="layer", do_stable_layer_norm=True),
}


def small_hf_config(arch: str, **overrides):
    from transformers import Wav2Vec2Config

    params = dict(
        vocab_size=len(HF_TOKENS), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, conv_dim=(32,) * 7, conv_bias=True, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, num_codevectors_per_group=16, num_codevector_groups=2,
        codevector_dim=32, proj_codevector_dim=24, mask_time_prob=0.05,
    )
    params.update(ARCHS[arch])
    params.update(overrides)
    return Wav2Vec2Config(**params)


def save_hf_model(model, directory: Path, do_normalize: bool, vocab: bool = True) -> Path:
    from transformers import Wav2Vec2FeatureExtractor

    model.save_pretrained(directory)
    if vocab:
        (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(HF_TOKENS)}))
    Wav2Vec2FeatureExtractor(
        do_normalize=do_normalize, return_attention_mask=model.config.do_stable_layer_norm
    ).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def two_torch_threads():
    """Training tests run with 2 torch threads (the CI machine's cores), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def hf_ctc_factory(tmp_path_factory):
    """(arch, do_normalize) -> (reference Wav2Vec2ForCTC in eval mode, saved directory)."""
    import torch
    from transformers import Wav2Vec2ForCTC

    cache: dict = {}

    def make(arch: str, do_normalize: bool):
        key = (arch, do_normalize)
        if key not in cache:
            torch.manual_seed(1234)
            model = Wav2Vec2ForCTC(small_hf_config(arch)).eval()
            d = tmp_path_factory.mktemp(f"hf_ctc_{arch}_{int(do_normalize)}")
            cache[key] = (model, save_hf_model(model, d, do_normalize))
        return cache[key]

    return make


def speech_like(n: int, seed: int, scale: float = 1.0, dc: float = 0.0) -> np.ndarray:
    """Harmonic bursts in noise: structured audio with a chosen scale and DC offset."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    f0 = rng.uniform(90, 220)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * env
    x = x + 0.1 * rng.standard_normal(n)
    return (scale * x / np.abs(x).max() + dc).astype(np.float32)
