"""The ``w2v`` command.

Each module of this package declares its subcommands' parsers (argparse only) and the handlers
that run on the runtime. Handlers are named ``"module:function"`` and imported only when their
subcommand runs, so ``w2v transcribe`` on a serving box never imports torch, and the training and
export commands (handlers in ``training``/``export``) say clearly when their extras are missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Optional, Sequence

from w2v_serve import version

# Heavy modules per extra, for the message when one is missing.
_EXTRA_OF_MODULE = {"torch": "train", "onnx": "export", "safetensors": "train", "kenlm": "lm",
                    "transformers": "test"}


class CommandError(Exception):
    """A user-facing failure: printed as ``w2v <cmd>: error: <message>``, exit code 2."""


def handler(path: str) -> Callable[[argparse.Namespace], int]:
    """The handler ``"module:function"``, imported when the command runs."""
    module, _, func = path.partition(":")

    def run(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            extra = _EXTRA_OF_MODULE.get((e.name or "").split(".")[0])
            if extra:
                raise CommandError(
                    f"this command needs the '{extra}' extra ({e.name} is not installed): pip install 'w2v[{extra}]'"
                ) from e
            raise
        return getattr(mod, func)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    # Imported here: each module's parsers need only argparse and this package.
    from w2v_serve.cli import (checkpoints, codes, data, evaluate, export, lm, precision, serve, stream, train,
                               transcribe, triton, wav2vec_u)

    parser = argparse.ArgumentParser(
        prog="w2v",
        description="wav2vec 2.0 end to end: train, import, export, transcribe, stream.",
    )
    parser.add_argument("--version", action="version", version=f"w2v {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (transcribe, evaluate, precision, serve, stream, triton, lm, export, checkpoints, train, data, codes,
                   wav2vec_u):
        module.add_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as e:
        print(f"w2v {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"w2v {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # Errors we raise on purpose carry a clear message; show it without a traceback.
        if type(e).__name__.endswith("Error") and type(e).__module__.split(".")[0] in ("training", "export", "w2v_serve"):
            print(f"w2v {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise
