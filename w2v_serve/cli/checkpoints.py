"""``w2v import`` and ``w2v info`` parsers (handlers in training.commands: they need torch)."""

from __future__ import annotations

import argparse

from w2v_serve.cli import handler


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert a published checkpoint into a w2v checkpoint")
    src = p.add_subparsers(dest="source", required=True, metavar="{hf,fairseq}")
    hf = src.add_parser("hf", help="a transformers Wav2Vec2ForCTC / Wav2Vec2ForPreTraining directory")
    hf.add_argument("path", metavar="DIR", help="directory written by save_pretrained (config.json, weights, vocab.json)")
    hf.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    hf.set_defaults(func=handler("training.commands:cmd_import"))
    fs = src.add_parser("fairseq", help="a fairseq wav2vec2 or wav2vec_ctc checkpoint (.pt)")
    fs.add_argument("path", metavar="FILE")
    fs.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    fs.add_argument("--dict", metavar="FILE", help="dict.ltr.txt of a CTC checkpoint (default: beside FILE)")
    fs.set_defaults(func=handler("training.commands:cmd_import"))

    info = sub.add_parser("info", help="describe a w2v checkpoint or model directory")
    info.add_argument("path", metavar="CKPT|DIR")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=handler("training.commands:cmd_info"))
