"""``python -m training pretrain|finetune CONFIG [KEY=VALUE ...]``: what torchrun launches.

    torchrun --nproc_per_node=N -m training pretrain configs/pretrain_base.yaml optim.update_freq=8

The same as ``w2v pretrain`` / ``w2v finetune`` (the w2v command line, restricted to the two
training commands), one process per device.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from w2v_serve.cli import main

COMMANDS = ("pretrain", "finetune")
USAGE = ("usage: python -m training {pretrain,finetune} [CONFIG] [KEY=VALUE ...] [--print-config]\n"
         "       torchrun --nproc_per_node=N -m training {pretrain,finetune} [CONFIG] [KEY=VALUE ...]\n"
         "(`python -m training pretrain --help` for the options; every other command is `w2v COMMAND`)")


def run(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not argv or argv[0] not in COMMANDS:
        got = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"{USAGE}\npython -m training: error: {got}; choose pretrain or finetune", file=sys.stderr)
        return 2
    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
