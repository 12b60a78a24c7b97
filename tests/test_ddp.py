"""Two processes (torchrun, gloo) make the same update as one process on the joined batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.speech_data import TINY_MODEL

UPDATES = 2
ROOT = Path(__file__).resolve().parent.parent


def ddp_config(manifest: str, save_dir: str):
    from training.train_config import PretrainConfig, load_config

    # No dropout: what is random is drawn explicitly (masks, distractors, Gumbel noise) and replayed.
    return load_config(PretrainConfig, ROOT / "configs" / "pretrain_small.yaml", [
        f"data.train={manifest}", f"run.save_dir={save_dir}", "data.max_tokens=64000", "data.max_sample_size=32000",
        "data.num_workers=0", "run.progress=false", "run.tensorboard=false", "task.num_negatives=10",
        "schedule.warmup_updates=1", "optim.lr=1e-3", "optim.clip_norm=1.0", *TINY_MODEL])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from tests.speech_data import write_speech_like

    return write_speech_like(tmp_path_factory.mktemp("ddp_audio"), 8, 2.0, seed=3)


def test_two_gloo_processes_equal_one_process_on_the_joined_batch(corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path), str(corpus)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["world_size"] == 2
    # DDP keeps the replicas identical.
    for k, v in ranks[0]["state"].items():
        assert torch.equal(v, ranks[1]["state"][k]), k

    # One process, the same initial weights, each update on the two halves joined.
    from training.data import PretrainCollater
    from training.pretrain import PretrainDraws, PretrainTask
    from training.task import DistContext
    from training.trainer import Trainer

    cfg = ddp_config(str(corpus), str(tmp_path / "single"))
    torch.manual_seed(cfg.run.seed)
    task = PretrainTask(cfg)
    trainer = Trainer(cfg, task, DistContext())
    initial = {k: v.clone() for k, v in task.model.state_dict().items()}
    collate = PretrainCollater(cfg.run.seed, 1, cfg.data.max_sample_size)
    for u in range(UPDATES):
        parts = [ranks[r]["records"][u] for r in range(2)]
        assert all(p["applied"] for p in parts)
        indices = parts[0]["indices"] + parts[1]["indices"]
        assert not set(parts[0]["indices"]) & set(parts[1]["indices"])
        joined = collate([task.dataset[i] for i in indices])
        task.draw_override = PretrainDraws.cat([PretrainDraws(p["mask"], p["negatives"], p["noise"]) for p in parts])
        result = trainer.train_update([joined])
        assert result["normalizer"] == parts[0]["normalizer"] == parts[1]["normalizer"]
    for k, v in task.model.state_dict().items():
        ref = ranks[0]["state"][k]
        moved = (v - initial[k]).abs().max().item()
        err = (v - ref).abs().max().item()
        # Same update up to float summation order: tiny next to how far the weights moved.
        assert err <= 1e-5 + 1e-3 * moved, f"{k}: differs by {err:.3g} (moved {moved:.3g})"
    assert any(not torch.equal(initial[k], v) for k, v in task.model.state_dict().items())
