"""Handlers of ``w2v import`` and ``w2v info``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.checkpoint import load_checkpoint
from training.convert import import_fairseq, import_hf


def cmd_import(args: argparse.Namespace) -> int:
    if args.source == "hf":
        ckpt = import_hf(args.path)
    else:
        ckpt = import_fairseq(args.path, args.dict)
    ckpt.save(args.out)
    cfg = ckpt.model_config
    params = sum(t.numel() for t in ckpt.model_state.values())
    vocab = f", vocabulary of {len(ckpt.vocab)}" if ckpt.vocab is not None else ""
    print(f"wrote {args.out}: {ckpt.kind} checkpoint, {cfg.num_layers} x {cfg.embed_dim} "
          f"({'pre-LN' if cfg.layer_norm_first else 'post-LN'}, {cfg.extractor_mode} conv encoder), "
          f"{params / 1e6:.1f} M parameters{vocab}")
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
