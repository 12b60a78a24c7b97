"""The ``w2v`` command.

Parsers are declared here (no heavy imports); each subcommand's handler lives in its own module
and is imported only when that subcommand runs, so ``w2v transcribe`` on a serving box never
imports torch, and training commands say clearly when the training extras are missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Optional, Sequence

# Heavy modules per extra, for the message when one is missing.
_EXTRA_OF_MODULE = {"torch": "train", "onnx": "export", "safetensors": "train", "kenlm": "lm",
                    "transformers": "test"}


class CommandError(Exception):
    """A user-facing failure: printed as ``w2v <cmd>: error: <message>``, exit code 2."""


def _handler(path: str) -> Callable[[argparse.Namespace], int]:
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


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert a published checkpoint into a w2v checkpoint")
    src = p.add_subparsers(dest="source", required=True, metavar="{hf,fairseq}")
    hf = src.add_parser("hf", help="a transformers Wav2Vec2ForCTC / Wav2Vec2ForPreTraining directory")
    hf.add_argument("path", metavar="DIR", help="directory written by save_pretrained (config.json, weights, vocab.json)")
    hf.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    hf.set_defaults(func=_handler("training.cli:cmd_import"))
    fs = src.add_parser("fairseq", help="a fairseq wav2vec2 or wav2vec_ctc checkpoint (.pt)")
    fs.add_argument("path", metavar="FILE")
    fs.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    fs.add_argument("--dict", metavar="FILE", help="dict.ltr.txt of a CTC checkpoint (default: beside FILE)")
    fs.set_defaults(func=_handler("training.cli:cmd_import"))


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a w2v checkpoint or model directory")
    p.add_argument("path", metavar="CKPT|DIR")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_handler("training.cli:cmd_info"))


# Subcommands that other modules contribute: name -> "module:function" that adds the parser.
# A module that is not there yet leaves its command out of this build.
CONTRIBUTED_PARSERS: list[str] = [
    "w2v_serve.transcribe_cli:add_parser",
    "w2v_serve.lm:add_parser",
    "export.cli:add_parser",
    "training.cli_train:add_parsers",
    "training.data_cli:add_parser",
    "training.evaluate:add_parser",
    "w2v_serve.triton_launcher:add_parser",
    "w2v_serve.service_cli:add_parsers",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="w2v",
        description="wav2vec 2.0 end to end: train, import, export, transcribe, stream.",
    )
    parser.add_argument("--version", action="version", version=f"w2v {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_import(sub)
    _add_info(sub)
    add_contributed_parsers(sub, CONTRIBUTED_PARSERS)
    return parser


def add_contributed_parsers(sub: argparse._SubParsersAction, paths: Sequence[str]) -> None:
    """Call each ``"module:function"(sub, handler)``; a module absent from this build is skipped."""
    for path in paths:
        module, _, func = path.partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue
            raise
        getattr(mod, func)(sub, _handler)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("w2v")
    except Exception:  # running from a source tree without installation
        return "0+unknown"


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


if __name__ == "__main__":
    sys.exit(main())
