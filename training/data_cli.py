"""``w2v data ...``: data preparation subcommands. Parsers only (no torch at import time).

``manifest`` is here; other modules add their subcommands (``synth``, the espeak-ng corpus) by
being listed in ``DATA_SUBCOMMANDS`` with an ``add_parser(sub, handler)`` function.
"""

from __future__ import annotations

import argparse
from typing import Callable

DATA_SUBCOMMANDS: list[str] = [
    "training.data_cli:add_manifest_parser",
    "training.synth:add_synth_parser",
]


def add_manifest_parser(sub: argparse._SubParsersAction, handler: Callable) -> None:
    p = sub.add_parser("manifest", help="write fairseq .tsv/.ltr/.wrd or JSON-lines manifests for a folder or file list",
                       description="Scan audio files, read their lengths (at 16 kHz), attach transcripts (a "
                                   "<name>.txt beside each file, or --transcripts), split off a validation share.")
    p.add_argument("source", metavar="DIR|LIST", help="folder (searched recursively) or a text file with one path per line")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for train.* and valid.*")
    p.add_argument("--format", choices=("tsv", "jsonl"), default="tsv",
                   help="tsv: fairseq train.tsv (+ .ltr/.wrd); jsonl: train.jsonl with path, text, num_samples")
    p.add_argument("--valid-percent", type=float, default=0.0, metavar="F", help="share for valid.* (0..1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--ext", default="wav,flac,ogg", help="audio extensions to collect (comma-separated)")
    p.add_argument("--transcripts", metavar="FILE", help="id<TAB>text lines or JSON lines (path|id, text)")
    p.add_argument("--name", default="train", help="name of the main split (default: train)")
    p.set_defaults(func=handler("training.manifest:cmd_manifest"))


def add_parser(sub: argparse._SubParsersAction, handler: Callable) -> None:
    from w2v_serve.cli import add_contributed_parsers

    p = sub.add_parser("data", help="prepare training data (manifests, synthetic corpus)")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    add_contributed_parsers(data_sub, DATA_SUBCOMMANDS)
