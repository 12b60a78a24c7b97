"""Training configs: YAML recipes, dotted overrides, clear errors; schedules; manifests and batching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.config import ConfigError
from training.train_config import FinetuneConfig, PretrainConfig, load_config, to_dict

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["pretrain_base", "pretrain_large", "pretrain_small",
                                  "finetune_base", "finetune_large", "finetune_small"])
def test_recipes_load_and_build(name):
    cls = PretrainConfig if name.startswith("pretrain") else FinetuneConfig
    cfg = load_config(cls, CONFIGS / f"{name}.yaml")
    model = cfg.model.build()
    arch = name.split("_")[1]
    assert model.embed_dim == {"base": 768, "large": 1024, "small": 256}[arch]
    if name == "pretrain_base":  # the paper's BASE mechanics
        assert (model.mask_prob, model.mask_length, cfg.task.num_negatives, cfg.task.logit_temp) == (0.65, 10, 100, 0.1)
        assert cfg.task.latent_temp == [2.0, 0.5, 0.999995] and cfg.optim.lr == 5e-4
    if name.startswith("finetune"):
        assert cfg.schedule.kind == "tri_stage" and cfg.task.freeze_feature_encoder


def test_dotted_overrides_and_types():
    cfg = load_config(PretrainConfig, CONFIGS / "pretrain_small.yaml",
                      ["optim.lr=1e-4", "model.num_layers=2", "run.precision=bf16", "optim.betas=[0.9,0.99]",
                       "data.train=/x/train.tsv"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.model.build().num_layers == 2
    assert cfg.run.precision == "bf16" and cfg.optim.betas == [0.9, 0.99] and cfg.data.train == "/x/train.tsv"
    # Round trip through a dict.
    again = load_config(PretrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in
                                               [("optim.lr", 1e-4), ("model.num_layers", 2)]])
    assert to_dict(again)["optim"]["lr"] == 1e-4


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "optim.lrr"),
    ("model.num_layerz=2", "model.num_layerz"),
    ("nosuch.key=1", "nosuch"),
    ("run.max_updates=abc", "run.max_updates must be an integer"),
    ("run.precision=fp8", "run.precision"),
    ("optim.lr", "key=value"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(PretrainConfig, None, [override])


def test_polynomial_and_tri_stage_schedules():
    from training.train_config import ScheduleConfig
    from training.trainer import LRSchedule

    poly = LRSchedule(ScheduleConfig(kind="polynomial", warmup_updates=10), 1.0, 110)
    assert poly(0) < poly(5) < poly(9) <= 1.0 and poly(10) == 1.0
    assert math.isclose(poly(60), 0.5) and poly(110) == 0.0
    tri = LRSchedule(ScheduleConfig(kind="tri_stage"), 1.0, 1000)   # 100 warm-up, 400 hold, 500 decay
    assert math.isclose(tri(0), 0.01) and math.isclose(tri(50), 0.505)
    assert tri(100) == tri(499) == 1.0
    assert math.isclose(tri(750), math.sqrt(0.05), rel_tol=1e-9)   # halfway down an exponential
    assert math.isclose(tri(999), 0.05 ** (499 / 500), rel_tol=1e-9) and math.isclose(tri(5000), 0.05)


# ---------------------------------------------------------------- data
def _wav(path: Path, seconds: float, sr: int = 16000) -> Path:
    rng = np.random.default_rng(len(path.name))
    sf.write(str(path), (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32), sr)
    return path


def test_manifest_command_writes_fairseq_and_jsonl_and_skips_corrupt(tmp_path, capsys):
    from w2v_serve.cli import main as w2v
    from training.manifest import read_manifest

    src = tmp_path / "audio"
    (src / "sub").mkdir(parents=True)
    _wav(src / "a.wav", 1.0)
    _wav(src / "sub" / "b.wav", 0.5, sr=8000)       # resampled length: 0.5 s at 16 kHz
    (src / "a.txt").write_text("hello world\n")
    (src / "sub" / "b.txt").write_text("good  bye")
    (src / "bad.wav").write_bytes(b"RIFF not really a wav")
    assert w2v(["data", "manifest", str(src), "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "bad.wav" in err
    utts = read_manifest(tmp_path / "m" / "train.tsv")
    assert [(u.path.name, u.num_samples, u.text) for u in utts] == [("a.wav", 16000, "hello world"),
                                                                   ("b.wav", 8000, "good bye")]
    assert (tmp_path / "m" / "train.ltr").read_text().splitlines()[0] == "h e l l o | w o r l d |"
    assert w2v(["data", "manifest", str(src), "--out", str(tmp_path / "j"), "--format", "jsonl"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "j" / "train.jsonl").read_text().splitlines()]
    assert {r["text"] for r in rows} == {"hello world", "good bye"}
    assert [u.num_samples for u in read_manifest(tmp_path / "j" / "train.jsonl")] == [16000, 8000]


def test_bucketed_batches_respect_the_cap_and_cover_everything():
    from training.data import BucketBatcher

    rng = np.random.default_rng(0)
    sizes = rng.integers(16000, 250000, 500)
    batcher = BucketBatcher(sizes, 1_400_000, seed=3)
    batches = batcher.batches(epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) * max(sizes[b]) <= 1_400_000 for b in batches)
    # Bucketing: little padding compared with random batches of the same count.
    waste = sum(len(b) * max(sizes[b]) - sum(sizes[b]) for b in batches) / sizes.sum()
    assert waste < 0.1
    assert batches == batcher.batches(epoch=1) and batches != batcher.batches(epoch=2)
    shards = [batcher.shard(1, r, 3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert not set(map(tuple, shards[0])) & set(map(tuple, shards[1]))


def test_python_m_training_runs_only_the_training_commands(capsys):
    """`torchrun ... -m training pretrain CONFIG ...`: the w2v command line, pretrain/finetune only."""
    import yaml

    from training.__main__ import run

    assert run(["pretrain", str(CONFIGS / "pretrain_small.yaml"), "optim.lr=1e-4", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 1e-4
    assert run(["finetune", "optim.lr=3e-5", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 3e-5
    for argv in (["transcribe", "x.wav"], []):
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert "choose pretrain or finetune" in err and "usage: python -m training" in err
