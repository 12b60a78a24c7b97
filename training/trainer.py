"""The training loop shared by pre-training and CTC fine-tuning.

One update = ``optim.update_freq`` micro-batches on every process. Each task returns, per
micro-batch, an *objective* whose gradients summed over processes are those of the global summed
loss, plus the number it is normalized by (masked steps for pre-training, utterances for
fine-tuning, as fairseq does); after accumulation the gradients are scaled by
world_size / Σ normalizer. So N processes make exactly the update one process makes on the joined
batch (DistributedDataParallel averages gradients; the counts are all-reduced).

Determinism and resumption: the RNGs are re-seeded from (seed, update[, rank]) at every update
(fairseq does the same), batches are a pure function of (seed, epoch), and a checkpoint holds the
model, optimizer, loss scaler, update, data position and RNG states. A run stopped at any update
(Ctrl-C / SIGTERM finishes the update, saves, and exits) and resumed ends bit-identical to one
that never stopped.

The loop knows tasks only through ``training.task`` (``Task``, ``StepOutput``, ``DistContext``); the
``w2v pretrain`` / ``w2v finetune`` handlers that pick a task are in ``training.commands``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from training.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_state_checked
from training.cost import StageCost
from training.task import DistContext, StepOutput, Task
from training.train_config import TrainConfig, to_dict

log = logging.getLogger("w2v.train")


class TrainingError(RuntimeError):
    """A run that cannot start or continue (bad data, alarm with alarm_fatal, ...)."""


# ---------------------------------------------------------------------------- distributed
def init_distributed(device_name: str = "auto") -> DistContext:
    """From torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); NCCL on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local_rank, device)


# ---------------------------------------------------------------------------- schedules
class LRSchedule:
    """Learning rate as a pure function of the update (no state beyond it).

    polynomial: linear warm-up from 0, then linear decay to ``end_lr`` at ``max_updates``
    (fairseq's polynomial_decay, pre-training). tri_stage: warm-up from ``init_lr_scale``·lr,
    hold, exponential decay to ``final_lr_scale``·lr (fairseq's tri_stage, fine-tuning).
    """

    def __init__(self, cfg, peak_lr: float, max_updates: int) -> None:
        self.cfg, self.peak, self.max_updates = cfg, peak_lr, max_updates

    def __call__(self, update: int) -> float:
        cfg, peak = self.cfg, self.peak
        if cfg.kind == "constant":
            return peak
        if cfg.kind == "polynomial":
            warm = cfg.warmup_updates
            if update < warm:
                return peak * (update + 1) / (warm + 1)
            span = max(self.max_updates - warm, 1)
            frac = min(max(update - warm, 0) / span, 1.0)
            return cfg.end_lr + (peak - cfg.end_lr) * (1.0 - frac)
        warm, hold, decay = (int(r * self.max_updates) for r in cfg.phase_ratio)
        init, final = cfg.init_lr_scale * peak, cfg.final_lr_scale * peak
        if update < warm:
            return init + (peak - init) * update / max(warm, 1)
        if update < warm + hold:
            return peak
        if update < warm + hold + decay:
            factor = -math.log(cfg.final_lr_scale) / max(decay, 1)
            return peak * math.exp(-factor * (update - warm - hold))
        return final


# ---------------------------------------------------------------------------- RNG state
def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and processes)."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0]) >> 1


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain lists (loadable with weights_only=True)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- metrics sinks
class MetricsLog:
    """JSON lines (``metrics.jsonl``), TensorBoard when installed, and log messages; rank 0 only."""

    def __init__(self, directory: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = directory / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(directory / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.writer = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            split = record.get("split", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("update", "time"):
                    self.writer.add_scalar(f"{split}/{k}", v, record.get("update", 0))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------- the loop
class Trainer:
    def __init__(self, cfg: TrainConfig, task: Task, ctx: DistContext) -> None:
        self.cfg, self.task, self.ctx = cfg, task, ctx
        self.save_dir = Path(cfg.run.save_dir)
        if ctx.is_main:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        self.model = task.model
        task.module.to(ctx.device)
        params = [p for p in task.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                           eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
        self.schedule = LRSchedule(cfg.schedule, cfg.optim.lr, cfg.run.max_updates)
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.run.precision]
        # Losses are sums over a batch (hundreds of steps): start the fp16 loss scale at fairseq's
        # 128 rather than 65536, which would overflow for the first dozen updates.
        self.scaler = torch.amp.GradScaler(ctx.device.type, init_scale=128.0, enabled=cfg.run.precision == "fp16")
        self.wrapped: nn.Module = task.module
        if ctx.distributed:
            self.wrapped = nn.parallel.DistributedDataParallel(
                task.module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=task.find_unused_parameters())
        self.update = 0
        self.epoch = 1
        self.batch_in_epoch = 0            # this process's micro-batches consumed in the epoch
        self.callbacks: list[Callable[["Trainer", dict], None]] = []
        self._stop_signal: Optional[int] = None
        self.metrics = MetricsLog(self.save_dir, ctx.is_main, cfg.run.tensorboard)
        self.skipped_updates = 0
        self.cost = StageCost()  # CPU and wall seconds over all starts, in the checkpoint

    # ------------------------------------------------------------------ checkpoints
    @property
    def last_checkpoint(self) -> Path:
        return self.save_dir / "checkpoint_last.pt"

    def state(self, cost: dict[str, float]) -> dict[str, Any]:
        """``cost``: ``cost_so_far()``, taken by every process before rank 0 calls this."""
        return {
            "task": self.task.name,
            "config": to_dict(self.cfg),
            "update": self.update,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.ctx.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "cost": cost,
            **self.task.checkpoint_extra(),
        }

    def cost_so_far(self) -> dict[str, float]:
        """CPU seconds of every process, wall seconds, over all starts. Collective in a
        distributed run: every process calls it at the same point."""
        cpu = self.ctx.sum(torch.tensor([self.cost.cpu_since_start()], dtype=torch.float64, device=self.ctx.device))
        return self.cost.total(float(cpu[0]))

    def save(self, path: Optional[Path] = None) -> Optional[Path]:
        """Rank 0 writes atomically; the others wait so nobody races ahead of a checkpoint."""
        path = path or self.last_checkpoint
        cost = self.cost_so_far()  # collective: before the rank-0-only part
        if self.ctx.is_main:
            ckpt = Checkpoint.from_model(self.model, self.task.vocab(),
                                         meta={"source": f"w2v {self.task.name}", "update": self.update},
                                         training=self.state(cost))
            ckpt.save(path)
            if self.cfg.run.keep_interval_checkpoints and path == self.last_checkpoint:
                ckpt.save(self.save_dir / f"checkpoint_{self.update}.pt")
        if self.ctx.distributed:
            dist.barrier()
        return path

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        t = ckpt.training
        if not t or t.get("task") != self.task.name:
            raise CheckpointError(f"{path}: not a {self.task.name} training checkpoint; "
                                  f"start a new run in another run.save_dir or set run.resume=false")
        load_state_checked(self.model, ckpt.model_state)
        self.optimizer.load_state_dict(t["optimizer"])
        self.scaler.load_state_dict(t["scaler"])
        self.update, self.epoch, self.batch_in_epoch = t["update"], t["epoch"], t["batch_in_epoch"]
        if t.get("world_size", 1) != self.ctx.world_size:
            # Same global position, split over another number of processes.
            self.batch_in_epoch = self.batch_in_epoch * t["world_size"] // self.ctx.world_size
            log.warning("resuming a %d-process run on %d processes: data order continues approximately",
                        t["world_size"], self.ctx.world_size)
        set_rng_state(t["rng"])
        self.cost.load(t.get("cost", {}))
        if self.ctx.is_main:
            log.info("resumed from %s at update %d (epoch %d, batch %d)", path, self.update, self.epoch,
                     self.batch_in_epoch)

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        print(f"\nw2v: {signal.Signals(signum).name} received: finishing update {self.update + 1}, "
              f"saving, then stopping (again to abort)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _signal_handlers(self):
        previous = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[s] = signal.signal(s, self._on_signal)
            except ValueError:  # not the main thread
                pass
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ one update
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def _seed_update(self) -> torch.Generator:
        """Dropout/layer drop: same on every process (like fairseq); masks etc.: per process."""
        seed = self.cfg.run.seed
        torch.manual_seed(_seed(seed, self.update))
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(_seed(seed, self.update))
        gen = torch.Generator(device=self.ctx.device)
        gen.manual_seed(_seed(seed, self.update, self.ctx.rank, 1))
        return gen

    def train_update(self, micro_batches: list, generator: Optional[torch.Generator] = None) -> dict[str, Any]:
        """One optimizer update over this process's micro-batches (None entries: batches whose
        files all failed). Returns the global sums and gauges of the update."""
        ctx = self.ctx
        self.task.module.train()
        generator = generator if generator is not None else self._seed_update()
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(self.update)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), device=ctx.device, dtype=torch.float64))
        gauges: dict[str, float] = {}
        normalizer = 0.0
        loss_value = torch.zeros((), device=ctx.device, dtype=torch.float64)
        # Every process must run the same number of forward/backward passes (collectives inside).
        have = ctx.sum(torch.tensor([float(b is None) for b in micro_batches], device=ctx.device))
        usable = [b for b, missing in zip(micro_batches, have.tolist()) if missing == 0]
        for i, batch in enumerate(usable):
            last = i == len(usable) - 1
            sync = contextlib.nullcontext() if (last or not ctx.distributed) else self.wrapped.no_sync()
            with sync:
                with self._autocast():
                    out: StepOutput = self.task.step(self.wrapped, batch.to(ctx.device), self.update, ctx,
                                                     generator)
                self.scaler.scale(out.objective).backward()
            normalizer += out.normalizer
            loss_value += out.objective.detach().double()
            for k, v in out.stats.items():
                sums[k] += v.detach().double()
            gauges.update(out.gauges)
        keys = sorted(sums)
        reduced = ctx.sum(torch.stack([loss_value] + [sums[k] for k in keys])) if keys else ctx.sum(loss_value[None])
        finite = bool(torch.isfinite(reduced[0]))
        totals = {k: float(v) for k, v in zip(keys, reduced[1:].tolist())}

        grad_norm = float("nan")
        applied = False
        if usable and normalizer > 0:
            self.scaler.unscale_(self.optimizer)
            scale = ctx.world_size / normalizer
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            for p in params:
                p.grad.mul_(scale)
            clip = self.cfg.optim.clip_norm if self.cfg.optim.clip_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if params else 0.0
            if finite and math.isfinite(grad_norm):
                self.scaler.step(self.optimizer)
                applied = True
            self.scaler.update()
        if not applied:
            self.skipped_updates += 1
            self.optimizer.zero_grad(set_to_none=True)
            why = ("no usable batch" if not usable else
                   "non-finite loss" if not finite else f"non-finite gradient (norm {grad_norm})")
            if ctx.is_main:
                log.warning("skipping update %d: %s; the weights were not changed", self.update + 1, why)
                self.metrics.write({"update": self.update + 1, "split": "train", "skipped": why})
        self.update += 1
        return {"sums": totals, "gauges": gauges, "grad_norm": grad_norm, "applied": applied,
                "lr": self.optimizer.param_groups[0]["lr"], "normalizer": normalizer}

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        if cfg.run.resume and self.last_checkpoint.exists():
            self.resume(self.last_checkpoint)
        if self.update >= cfg.run.max_updates:
            if ctx.is_main:
                log.info("nothing to do: update %d >= run.max_updates %d", self.update, cfg.run.max_updates)
            return {"update": self.update}
        bar = None
        if ctx.is_main and cfg.run.progress and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=cfg.run.max_updates, initial=self.update, desc=self.task.name, unit="upd",
                       dynamic_ncols=True)
        window: dict[str, float] = defaultdict(float)
        window_updates = 0
        started = time.time()
        last_record: dict[str, Any] = {}
        stopped = False
        freq = cfg.optim.update_freq
        with self._signal_handlers():
            while self.update < cfg.run.max_updates and not stopped:
                batches, count = self.task.loaders(self.epoch, self.batch_in_epoch, ctx)
                iterator = iter(batches)
                while self.batch_in_epoch + freq <= count and self.update < cfg.run.max_updates:
                    micro = [next(iterator) for _ in range(freq)]
                    self.batch_in_epoch += freq
                    result = self.train_update(micro)
                    window_updates += 1
                    for k, v in result["sums"].items():
                        window[k] += v
                    if bar is not None:
                        bar.update(1)
                    record = None
                    if self.update % cfg.run.log_interval == 0 or self.update == cfg.run.max_updates:
                        record = {"update": self.update, "split": "train", "epoch": self.epoch,
                                  "lr": result["lr"], "grad_norm": result["grad_norm"],
                                  "updates_per_s": window_updates / max(time.time() - started, 1e-9),
                                  **self.task.log_record(dict(window), result["gauges"], window_updates),
                                  **self.cost_so_far()}
                        self._log(record, bar)
                        alarms = self.task.check_alarms(record, self.update)
                        for a in alarms:
                            self._alarm(a)
                        last_record = record
                        window, window_updates, started = defaultdict(float), 0, time.time()
                    if self.update % cfg.run.eval_interval == 0 or self.update == cfg.run.max_updates:
                        ev = self.task.evaluate(ctx)
                        if ev is not None:
                            self._log({"update": self.update, "split": "valid", **ev}, bar)
                            last_record = {**last_record, **{f"valid_{k}": v for k, v in ev.items()}}
                    for cb in self.callbacks:
                        cb(self, result)
                    stop = ctx.sum(torch.tensor([float(self._stop_signal is not None)], device=ctx.device))
                    if self.update % cfg.run.save_interval == 0 or self.update == cfg.run.max_updates or stop.item():
                        self.save()
                    if stop.item():
                        stopped = True
                        if ctx.is_main:
                            print(f"w2v: stopped at update {self.update}; checkpoint {self.last_checkpoint}; "
                                  f"the same command resumes", file=sys.stderr, flush=True)
                        break
                if not stopped and self.batch_in_epoch + freq > count:
                    self.epoch += 1
                    self.batch_in_epoch = 0
        if bar is not None:
            bar.close()
        self.metrics.close()
        return {"update": self.update, "stopped": stopped, "skipped_updates": self.skipped_updates, **last_record}

    def _log(self, record: dict[str, Any], bar) -> None:
        if not self.ctx.is_main:
            return
        self.metrics.write(record)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()
                 if k not in ("split", "time")}
        if bar is not None:
            bar.set_postfix({k: shown[k] for k in ("loss", "accuracy", "code_perplexity", "wer", "cer") if k in shown})
            bar.write(json.dumps(shown))
        else:
            log.info("%s %s", record.get("split"), json.dumps(shown))

    def _alarm(self, message: str) -> None:
        if self.ctx.is_main:
            log.warning("ALARM: %s", message)
            print(f"w2v {self.task.name}: ALARM: {message}", file=sys.stderr, flush=True)
            self.metrics.write({"update": self.update, "split": "train", "alarm": message})
        if getattr(self.cfg.task, "alarm_fatal", False):
            raise TrainingError(f"stopped by an alarm at update {self.update}: {message}")


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)
