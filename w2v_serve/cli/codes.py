"""``w2v codes``: discrete speech units of audio files (parser only: the handler,
training.codes, needs torch)."""

from __future__ import annotations

import argparse

from w2v_serve.cli import handler
from w2v_serve.cli.options import add_torch_threads_flag

_DESCRIPTION = """Discrete units per frame from a vq-wav2vec checkpoint (fairseq's vq-wav2vec.pt,
Gumbel, or vq-wav2vec_kmeans.pt) or a wav2vec 2.0 checkpoint with its quantizer (a w2v pre-training
checkpoint, or a fairseq wav2vec2 pre-training .pt): eval mode, no noise. One line per input,
path<TAB>units; --format pairs writes fairseq's vq-wav2vec_featurize.py units (a-b per frame, one
index per group), flat one index per frame (g1*V+g2). A file that fails is reported on stderr and
the others are written; the exit code is 1 if any failed."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("codes", help="discrete units (vq-wav2vec / wav2vec 2.0 quantizer indices) of audio files",
                       description=_DESCRIPTION)
    p.add_argument("inputs", nargs="+", metavar="FILE",
                   help="audio files, directories, glob patterns, or fairseq manifests (.tsv)")
    p.add_argument("--checkpoint", "-c", required=True, metavar="CKPT",
                   help="vq-wav2vec .pt (fairseq), w2v pre-training checkpoint, or fairseq wav2vec2 pre-training .pt")
    p.add_argument("--output", "-o", metavar="FILE", help="write here (atomically) instead of stdout")
    p.add_argument("--format", choices=("pairs", "flat"), default="pairs",
                   help="pairs: 'a-b' per frame as vq-wav2vec_featurize.py (default); flat: one index g1*V+g2")
    p.add_argument("--no-path", action="store_true",
                   help="units only, as vq-wav2vec_featurize.py's .src (a failed file leaves an empty line)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    add_torch_threads_flag(p)
    p.add_argument("--max-samples", type=int, default=1_300_000, metavar="N",
                   help="longer recordings run in equal chunks of at most N samples (fairseq's --max-size)")
    p.set_defaults(func=handler("training.codes:cmd_codes"))
