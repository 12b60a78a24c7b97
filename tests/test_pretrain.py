"""Pre-training runs on the CPU: learning above chance, the collapse alarm, exact resumption,
non-finite steps, corrupt files, checkpoints that load with weights_only."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from tests.speech_data import TINY_MODEL
from training.checkpoint import load_checkpoint, safe_torch_load
from training.cost import cpu_seconds
from training.train_config import PretrainConfig, load_config

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "pretrain_small.yaml")


pytestmark = pytest.mark.usefixtures("two_torch_threads")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 two-second clips of speech-like audio (harmonic bursts in noise, each its own pitch and
    rhythm), with a fairseq manifest."""
    import soundfile as sf

    from tests.conftest import speech_like

    d = tmp_path_factory.mktemp("pretrain_audio")
    rows = []
    for i in range(24):
        sf.write(str(d / f"clip{i}.wav"), speech_like(32000, seed=i, scale=0.5), 16000)
        rows.append(f"clip{i}.wav\t32000")
    (d / "train.tsv").write_text(f"{d}\n" + "\n".join(rows) + "\n")
    return d / "train.tsv"


def overrides(corpus: Path, save_dir: Path, *extra: str) -> list[str]:
    return [f"data.train={corpus}", f"run.save_dir={save_dir}", "data.max_tokens=96000", "data.max_sample_size=24000",
            "data.num_workers=0", "run.progress=false", "run.tensorboard=false", "task.num_negatives=20",
            *TINY_MODEL, *extra]


def metrics(save_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (save_dir / "metrics.jsonl").read_text().splitlines()]


def test_small_pretraining_learns_without_collapse(corpus, tmp_path):
    from w2v_serve.cli import main as w2v

    save = tmp_path / "run"
    args = overrides(corpus, save, "run.max_updates=150", "run.log_interval=25", "schedule.warmup_updates=20",
                     "optim.lr=2e-3", "task.codebook_init_std=0.5", "task.diversity_weight=1.0",
                     "model.mask_prob=0.3", "model.mask_length=4", "task.alarm_after=100", "run.save_interval=1000")
    assert w2v(["pretrain", CONFIG, *args]) == 0
    train = [m for m in metrics(save) if m.get("split") == "train" and "accuracy" in m]
    first, last = train[0], train[-1]
    assert last["update"] == 150
    # Well above chance (chance = E[1/|Q_t|], about 1/21 here) and better than at the start.
    assert last["accuracy"] > 2.0 * last["chance"], last
    assert last["accuracy"] > first["accuracy"]
    # The codebooks are in use: far from one entry per codebook (2 groups x 32 entries).
    assert last["code_perplexity"] > 8 and last["prob_perplexity"] > 8, last
    assert not any("alarm" in m for m in metrics(save))
    ckpt = load_checkpoint(save / "checkpoint_last.pt")
    assert ckpt.kind == "pretrain" and ckpt.training["update"] == 150


def _trainer(corpus: Path, save: Path, *extra: str):
    from training.pretrain import PretrainTask
    from training.task import DistContext
    from training.trainer import Trainer

    cfg = load_config(PretrainConfig, CONFIG, overrides(corpus, save, *extra))
    torch.manual_seed(cfg.run.seed)
    task = PretrainTask(cfg)
    return Trainer(cfg, task, DistContext())


def test_collapsed_codebook_raises_the_alarm(corpus, tmp_path):
    from training.trainer import TrainingError

    trainer = _trainer(corpus, tmp_path / "collapsed", "run.max_updates=4", "run.log_interval=2",
                       "task.alarm_after=0", "run.save_interval=1000")
    q = trainer.model.quantizer
    with torch.no_grad():  # every frame picks entry 0 of each codebook, whatever the noise
        q.weight_proj.weight.zero_()
        q.weight_proj.bias.zero_()
        q.weight_proj.bias.view(q.num_groups, q.num_vars)[:, 0] = 1e4
    result = trainer.run()
    assert result["code_perplexity"] == pytest.approx(2.0, abs=1e-3)
    alarms = [m["alarm"] for m in metrics(tmp_path / "collapsed") if "alarm" in m]
    assert any("codebook collapse" in a for a in alarms), alarms
    assert any("chance" in a for a in alarms), alarms

    fatal = _trainer(corpus, tmp_path / "fatal", "run.max_updates=4", "run.log_interval=2", "task.alarm_after=0",
                     "task.alarm_fatal=true")
    with torch.no_grad():
        fatal.model.quantizer.weight_proj.weight.zero_()
        fatal.model.quantizer.weight_proj.bias.view(2, -1)[:, 0] = 1e4
    with pytest.raises(TrainingError, match="codebook collapse"):
        fatal.run()


def test_interrupted_and_resumed_run_is_bit_identical(corpus, tmp_path):
    """SIGINT after update 3 (a real signal): the run finishes that update, saves and stops; the
    same command resumes and ends exactly where an uninterrupted run ends."""
    from training.commands import run_training

    # Dropout and a corrupt file in the data exercise the RNG and the skip path.
    data = tmp_path / "data"
    shutil.copytree(corpus.parent, data)
    lines = (data / "train.tsv").read_text().splitlines()
    lines[0] = str(data)
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (data / "train.tsv").write_text("\n".join(lines + ["broken.wav\t32000"]) + "\n")
    extra = ["run.max_updates=6", "run.log_interval=1", "run.save_interval=100", "model.dropout=0.1",
             "model.dropout_features=0.1", "schedule.warmup_updates=2"]

    straight = tmp_path / "straight"
    cpu_before = cpu_seconds()
    run_training("pretrain", CONFIG, overrides(data / "train.tsv", straight, *extra))
    cpu_spent = cpu_seconds() - cpu_before

    def interrupt(trainer, result):
        if trainer.update == 3:
            os.kill(os.getpid(), signal.SIGINT)

    resumed = tmp_path / "resumed"
    first = run_training("pretrain", CONFIG, overrides(data / "train.tsv", resumed, *extra), callbacks=[interrupt])
    assert first["stopped"] and first["update"] == 3
    stopped_at_3 = load_checkpoint(resumed / "checkpoint_last.pt")
    assert stopped_at_3.training["update"] == 3
    # The stage's cost goes on from the checkpoint's: pretend the first start took 10,000 s.
    stopped_at_3.training["cost"] = {"cpu_s": 10000.0, "wall_s": 10000.0}
    stopped_at_3.save(resumed / "checkpoint_last.pt")
    second = run_training("pretrain", CONFIG, overrides(data / "train.tsv", resumed, *extra))
    assert second["update"] == 6 and not second["stopped"]

    a = load_checkpoint(straight / "checkpoint_last.pt")
    b = load_checkpoint(resumed / "checkpoint_last.pt")
    for key, value in a.model_state.items():
        assert torch.equal(value, b.model_state[key]), key
    sa, sb = a.training["optimizer"]["state"], b.training["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][name], sb[k][name])
    assert (a.training["epoch"], a.training["batch_in_epoch"]) == (b.training["epoch"], b.training["batch_in_epoch"])
    # The logged losses of updates 4..6 are the same numbers.
    la = [m["loss"] for m in metrics(straight) if "loss" in m][3:]
    lb = [m["loss"] for m in metrics(resumed) if "loss" in m][3:]
    assert la == lb and len(la) == 3
    # Cost: the run's CPU seconds, at most what this process spent around it; the resumed run's
    # records and checkpoint count on from the 10,000 s its checkpoint said, and only grow.
    final_cpu = a.training["cost"]["cpu_s"]
    assert 0 < final_cpu <= cpu_spent + 0.2 and a.training["cost"]["wall_s"] > 0
    resumed_cpu = [m["cpu_s"] for m in metrics(resumed) if "loss" in m][3:]
    assert all(10000 <= c < 10000 + 600 for c in resumed_cpu) and resumed_cpu == sorted(resumed_cpu)
    assert resumed_cpu[-1] <= b.training["cost"]["cpu_s"] and b.training["cost"]["wall_s"] >= 10000
    # Training state loads with the weights-only unpickler (RNG states as tensors and lists).
    raw = safe_torch_load(resumed / "checkpoint_last.pt")
    assert isinstance(raw["training"]["rng"]["torch"], torch.Tensor)


def test_non_finite_loss_skips_the_update(corpus, tmp_path, caplog):
    trainer = _trainer(corpus, tmp_path / "nan", "run.max_updates=2")
    loader, _ = trainer.task.loaders(1, 0, trainer.ctx)
    batch = next(iter(loader))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch.waveforms[0, 100] = float("inf")
    with caplog.at_level("WARNING", logger="w2v.train"):
        result = trainer.train_update([batch])
    assert not result["applied"] and trainer.skipped_updates == 1
    assert "skipping update 1" in caplog.text and "non-finite" in caplog.text
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in trainer.model.parameters())
    # The next, healthy batch trains normally.
    batch.waveforms[0, 100] = 0.0
    assert trainer.train_update([batch])["applied"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu(corpus, tmp_path, precision):
    """Autocast (and fp16 loss scaling) also work without a GPU."""
    trainer = _trainer(corpus, tmp_path / precision, "run.max_updates=2", f"run.precision={precision}")
    loader, _ = trainer.task.loaders(1, 0, trainer.ctx)
    batch = next(iter(loader))
    results = [trainer.train_update([batch]) for _ in range(3)]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    if precision == "fp16":
        # Loss scaling: an overflowing update is skipped and halves the scale; the others apply.
        assert trainer.scaler.is_enabled()
        skipped = sum(not r["applied"] for r in results)
        assert trainer.scaler.get_scale() == 128.0 / 2 ** skipped
    assert any(r["applied"] for r in results)
