"""The encoder's temporal structure at initialization (training/feature_structure.py): the
pre-training health check that explains why the bundled model's per-frame-LayerNorm encoder sat
at chance while BASE's first block learns (docs/low_resource.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.speech_data import VOICES, write_corpus
from training.feature_structure import MIN_GAP, TemporalStructure, _load_batch, temporal_structure
from training.model import Wav2Vec2Model
from training.train_config import PretrainConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
LOWRES = str(ROOT / "configs" / "lowres" / "pretrain.yaml")

pytestmark = pytest.mark.usefixtures("two_torch_threads")


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """16 espeak-ng sentences (two voices)."""
    return write_corpus(tmp_path_factory.mktemp("structure"), voices=VOICES[:2])


def mean_structure(speech: Path, *overrides: str) -> TemporalStructure:
    cfg = load_config(PretrainConfig, LOWRES, [f"data.train={speech}", *overrides])
    batch = _load_batch(str(speech), 16, 48_000)
    rows = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = Wav2Vec2Model(cfg.model.build(quantizer=True, vocab_size=None))
        rows.append(temporal_structure(model, batch, torch.Generator().manual_seed(seed)))
    return TemporalStructure(*(sum(r[i] for r in rows) / len(rows) for i in range(3)))


def test_per_frame_layernorm_encoder_has_no_structure_at_init_and_base_first_block_has(speech):
    # Measured on this corpus: per-frame LayerNorm blocks, no bias: 0.474 vs 0.446 (gap 0.028);
    # BASE's GroupNorm first block with bias: 0.478 vs 0.297 (gap 0.18).
    flat = mean_structure(speech, "model.extractor_mode=layer_norm", "model.conv_bias=false")
    base = mean_structure(speech)   # the low-resource recipe: extractor_mode=default, conv bias
    assert flat.gap < MIN_GAP, flat
    assert base.gap > 2 * MIN_GAP, base
    assert base.adjacent > base.random


def test_identical_frames_have_full_structure_measure(speech):
    """A hand-made case: a model whose features do not change over time has adjacent = random = 1."""
    cfg = load_config(PretrainConfig, LOWRES, [f"data.train={speech}"])
    model = Wav2Vec2Model(cfg.model.build(quantizer=True, vocab_size=None))
    with torch.no_grad():
        model.feature_projection.layer_norm.weight.zero_()
        model.feature_projection.layer_norm.bias.fill_(1.0)     # LayerNorm(z) = 1 everywhere
    s = temporal_structure(model, _load_batch(str(speech), 4, 32_000))
    assert s.adjacent == pytest.approx(1.0, abs=1e-6) and s.random == pytest.approx(1.0, abs=1e-6)
    assert s.gap == pytest.approx(0.0, abs=1e-6)


def test_pretraining_warns_when_the_encoder_has_no_structure(speech, tmp_path, caplog):
    from training.pretrain import PretrainTask
    from training.task import DistContext
    from training.trainer import Trainer

    def run(save: Path, *extra: str) -> str:
        cfg = load_config(PretrainConfig, LOWRES, [
            f"data.train={speech}", f"run.save_dir={save}", "run.max_updates=1", "run.progress=false",
            "run.tensorboard=false", "data.num_workers=0", "data.max_tokens=96000", "task.num_negatives=10",
            "model.num_layers=1", *extra])
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="w2v.train"):
            Trainer(cfg, PretrainTask(cfg), DistContext()).run()
        return caplog.text

    flat = run(tmp_path / "flat", "model.extractor_mode=layer_norm", "model.conv_bias=false")
    assert "no temporal structure" in flat and "model.extractor_mode=default" in flat
    base = run(tmp_path / "base")
    assert "cosine of adjacent frames" in base and "no temporal structure" not in base
