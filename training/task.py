"""What the training loop and a training task agree on.

``training.trainer.Trainer`` runs any object that follows ``Task``; ``training.pretrain.PretrainTask``
and ``training.finetune.FinetuneTask`` are the two. Both sides import this module and neither
imports the other, so the loop and the loops' objectives stay free of import cycles:

    task  <-  trainer
    task  <-  pretrain, finetune
    trainer, pretrain, finetune  <-  commands (the ``w2v pretrain`` / ``w2v finetune`` handlers)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from training.model import Wav2Vec2Model


@dataclass
class DistContext:
    """This process's place in a (possibly one-process) run; ``training.trainer.init_distributed``
    builds it from torchrun's environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: Tensor) -> Tensor:
        """All-reduce (sum) without gradient."""
        if self.distributed:
            values = values.detach().clone()
            dist.all_reduce(values)
        return values

    def sum_with_grad(self, values: Tensor) -> Tensor:
        """All-reduce (sum) whose backward sums the gradients of every process."""
        if self.distributed:
            # Imported only in a multi-process run: torch.distributed.nn pulls in the RPC stack.
            import torch.distributed.nn.functional as dist_fn

            return dist_fn.all_reduce(values)
        return values


@dataclass
class StepOutput:
    """What a task returns for one micro-batch (see training/trainer.py's docstring)."""

    objective: Tensor              # backward() on this
    normalizer: float              # global count this micro-batch contributes (all processes)
    stats: dict[str, Tensor]       # local sums for logging (all-reduced once per update)
    gauges: dict[str, float]       # already-global values (perplexities, temperature)


class Task(Protocol):
    """What differs between pre-training and fine-tuning."""

    name: str                      # "pretrain" / "finetune": checkpoints record it
    module: nn.Module              # what DistributedDataParallel wraps
    model: Wav2Vec2Model           # the model inside it (saved in checkpoints)

    def loaders(self, epoch: int, skip: int, ctx: DistContext) -> tuple[Iterable, int]:
        """This process's batches of ``epoch`` after the first ``skip``, and their total count."""
        ...

    def step(self, wrapped: nn.Module, batch: Any, update: int, ctx: DistContext,
             generator: Optional[torch.Generator]) -> StepOutput:
        """Forward one micro-batch through ``wrapped`` (``module``, maybe inside DDP)."""
        ...

    def log_record(self, sums: dict[str, float], gauges: dict[str, float], updates: int) -> dict[str, float]:
        """The logged values of a window of ``updates`` updates from their global sums."""
        ...

    def check_alarms(self, record: dict[str, float], update: int) -> list[str]: ...

    def evaluate(self, ctx: DistContext) -> Optional[dict[str, float]]: ...

    def checkpoint_extra(self) -> dict[str, Any]: ...

    def vocab(self) -> Any: ...    # the Vocabulary saved with the checkpoint, or None

    def find_unused_parameters(self) -> bool: ...


def frame_lengths_of(model: Wav2Vec2Model, waveforms: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, int]:
    """Frame lengths and padded frame count of a batch without running the model."""
    if lengths is None:
        lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long, device=waveforms.device)
    num_frames = int(model.frame_lengths(torch.tensor([waveforms.shape[1]])).item())
    return model.frame_lengths(lengths), num_frames
