"""One process of the two-process gloo run in test_ddp.py (launched with torchrun).

Runs two real pre-training updates through Trainer (DistributedDataParallel, gloo) on this
rank's share of the batches and saves what it drew and the resulting weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_ddp import UPDATES, ddp_config  # noqa: E402
from training.pretrain import PretrainTask  # noqa: E402
from training.trainer import Trainer, init_distributed  # noqa: E402


def main(out: str, manifest: str) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    cfg = ddp_config(manifest, out)
    torch.manual_seed(cfg.run.seed)
    task = PretrainTask(cfg)
    trainer = Trainer(cfg, task, ctx)
    loader, _ = task.loaders(1, 0, ctx)
    batches = iter(loader)
    records = []
    for _ in range(UPDATES):
        batch = next(batches)
        result = trainer.train_update([batch])
        d = task.last_draws
        records.append({"indices": batch.indices, "mask": d.mask, "negatives": d.negatives, "noise": d.gumbel_noise,
                        "applied": result["applied"], "normalizer": result["normalizer"]})
    torch.save({"records": records, "state": task.model.state_dict(), "world_size": ctx.world_size},
               Path(out) / f"rank{ctx.rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
