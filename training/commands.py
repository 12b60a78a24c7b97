"""Handlers of ``w2v pretrain``, ``w2v finetune``, ``w2v import`` and ``w2v info`` (their parsers
are in ``w2v_serve.cli``; these need torch). ``run_training`` picks the task and runs
``training.trainer.Trainer`` on it, one process per device under torchrun
(``torchrun --nproc_per_node=N -m training pretrain CONFIG ...``)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import yaml

from training.checkpoint import CheckpointError, load_checkpoint
from training.importers import import_fairseq, import_hf
from training.finetune import FinetuneTask
from training.pretrain import PretrainTask
from training.task import Task
from training.train_config import FinetuneConfig, PretrainConfig, load_config, save_config, to_dict
from training.trainer import Trainer, init_distributed, setup_logging

log = logging.getLogger("w2v.train")

TASKS: dict[str, tuple[type, Callable[[Any], Task]]] = {
    "pretrain": (PretrainConfig, PretrainTask),
    "finetune": (FinetuneConfig, FinetuneTask),
}


def run_training(kind: str, config_path: Optional[str], overrides: list[str], print_config: bool = False,
                 callbacks: Optional[list[Callable]] = None) -> dict[str, Any]:
    """Build the config and the task, then train (under torchrun: one process per device)."""
    cfg_cls, task_cls = TASKS[kind]
    cfg = load_config(cfg_cls, config_path, overrides)
    if print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return {}
    ctx = init_distributed(cfg.run.device)
    setup_logging(ctx.rank)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    # Model initialization is seeded too (identical on every process).
    torch.manual_seed(cfg.run.seed)
    task = task_cls(cfg)
    trainer = Trainer(cfg, task, ctx)
    trainer.callbacks.extend(callbacks or [])
    if ctx.is_main:
        save_config(cfg, trainer.save_dir / f"{kind}_config.yaml")
        log.info("%s: %.1f M parameters, %s, %d process(es), precision %s", kind,
                 task.model.num_parameters() / 1e6, ctx.device, ctx.world_size, cfg.run.precision)
    try:
        return trainer.run()
    finally:
        if ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _config_and_overrides(args: argparse.Namespace) -> tuple[Optional[str], list[str]]:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)  # `w2v pretrain key=value ...` without a file
        config = None
    return config, overrides


def cmd_pretrain(args: argparse.Namespace) -> int:
    config, overrides = _config_and_overrides(args)
    run_training("pretrain", config, overrides, args.print_config)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    config, overrides = _config_and_overrides(args)
    run_training("finetune", config, overrides, args.print_config)
    return 0


def import_from_args(args: argparse.Namespace):
    """The checkpoint ``w2v import`` asks for, written to ``--out`` when given; prints a summary."""
    if args.source == "hf":
        if not args.out and not getattr(args, "export", None):
            raise CheckpointError("give --out CKPT, --export DIR, or both")
        ckpt = import_hf(args.path, revision=args.revision, language=args.language)
    else:
        ckpt = import_fairseq(args.path, args.dict)
    cfg = ckpt.model_config
    params = sum(t.numel() for t in ckpt.model_state.values())
    vocab = f", vocabulary of {len(ckpt.vocab)}" if ckpt.vocab is not None else ""
    lm = ", with its language model" if ckpt.meta.get("decoding") else ""
    summary = (f"{ckpt.kind} checkpoint ({cfg.family}), {cfg.num_layers} x {cfg.embed_dim} "
               f"({'pre-LN' if cfg.layer_norm_first else 'post-LN'}, {cfg.extractor_mode} conv encoder), "
               f"{params / 1e6:.1f} M parameters{vocab}{lm}")
    if args.out:
        ckpt.save(args.out)
        print(f"wrote {args.out}: {summary}")
    else:
        print(f"imported {args.path}: {summary}")
    return ckpt


def cmd_import(args: argparse.Namespace) -> int:
    import_from_args(args)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        card = path / "model_card.json"
        if not card.exists():
            raise FileNotFoundError(f"{path}: not a model directory (no model_card.json)")
        info = json.loads(card.read_text())
    else:
        ckpt = load_checkpoint(path)
        info = {
            "kind": ckpt.kind,
            "parameters": sum(t.numel() for t in ckpt.model_state.values()),
            "model_config": ckpt.model_config.to_dict(),
            "vocab": list(ckpt.vocab.tokens) if ckpt.vocab is not None else None,
            "meta": ckpt.meta,
            "training_state": ckpt.training is not None,
        }
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for key, value in info.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            print(f"{key}: {value}")
    return 0
