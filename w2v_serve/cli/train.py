"""``w2v pretrain`` and ``w2v finetune``: parsers only (torch is imported by the handlers)."""

from __future__ import annotations

import argparse

from w2v_serve.cli import handler

_EPILOG = """overrides: section.key=value, e.g. optim.lr=1e-4 model.num_layers=2 run.max_updates=500
data.train=manifests/train.tsv run.precision=bf16. A run resumes from run.save_dir/checkpoint_last.pt
when it exists (run.resume=false starts over). Several processes or GPUs:
  torchrun --nproc_per_node=N -m training pretrain CONFIG ..."""


def _add(sub: argparse._SubParsersAction, name: str, help_text: str, target: str) -> None:
    p = sub.add_parser(name, help=help_text, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", nargs="?",
                   help="YAML recipe (configs/pretrain_base.yaml, ...); defaults when omitted")
    p.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="config overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=handler(target))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add(sub, "pretrain", "self-supervised pre-training (contrastive + diversity, Gumbel quantizer)",
         "training.commands:cmd_pretrain")
    _add(sub, "finetune", "CTC fine-tuning from a pre-trained or imported checkpoint",
         "training.commands:cmd_finetune")
