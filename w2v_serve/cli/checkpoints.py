"""``w2v import`` and ``w2v info`` parsers (handlers in training.commands: they need torch)."""

from __future__ import annotations

import argparse

from w2v_serve.cli import handler


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert a published checkpoint into a w2v checkpoint")
    src = p.add_subparsers(dest="source", required=True, metavar="{hf,fairseq}")
    hf = src.add_parser(
        "hf", help="a transformers checkpoint of the wav2vec 2.0 family (directory or Hub id in the local cache)",
        description="Import a transformers checkpoint: wav2vec2 (BASE/LARGE, XLS-R, MMS), HuBERT, WavLM or "
                    "data2vec-audio; a CTC model, its base model, or Wav2Vec2ForPreTraining. SRC is a directory "
                    "written by save_pretrained or a Hub id, read from the local Hugging Face cache (HF_HOME / "
                    "HF_HUB_CACHE); nothing is downloaded.",
    )
    hf.add_argument("path", metavar="SRC", help="directory (config.json, weights, tokenizer files) or Hub id "
                                               "such as facebook/wav2vec2-base-960h")
    hf.add_argument("--out", metavar="CKPT", help="checkpoint file to write (required unless --export is given)")
    hf.add_argument("--revision", metavar="REV", help="branch, tag or commit of a Hub id (default: main)")
    hf.add_argument("--language", metavar="CODE",
                    help="MMS: the language whose adapter and vocabulary to import (e.g. fra); "
                         "without it an MMS checkpoint lists the available codes")
    hf.add_argument("--export", metavar="DIR",
                    help="also export the imported model to the model directory DIR (as `w2v export`), "
                         "ready for `w2v transcribe --model DIR` and `w2v serve --model DIR`")
    hf.add_argument("--external-data", action="store_true",
                    help="with --export: store the ONNX weights as external data (automatic above 2 GB)")
    hf.set_defaults(func=handler("export.exporter:cmd_import"))
    fs = src.add_parser("fairseq", help="a fairseq wav2vec2 or wav2vec_ctc checkpoint (.pt)")
    fs.add_argument("path", metavar="FILE")
    fs.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    fs.add_argument("--dict", metavar="FILE", help="dict.ltr.txt of a CTC checkpoint (default: beside FILE)")
    fs.set_defaults(func=handler("training.commands:cmd_import"))

    info = sub.add_parser("info", help="describe a w2v checkpoint or model directory")
    info.add_argument("path", metavar="CKPT|DIR")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=handler("training.commands:cmd_info"))
