"""The ``w2v export`` parser. Imports nothing heavy: the handler (export.exporter) loads torch
and onnx only when the command runs."""

from __future__ import annotations

import argparse

from w2v_serve.cli import handler


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a CTC checkpoint to a model directory (ONNX graphs, vocabulary, model card)",
        description="Write a model directory: model.onnx (full graph), encoder.onnx and transformer.onnx "
                    "(the streaming split), vocab.json and model_card.json, plus optional fp16/int8 variants.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a w2v ctc checkpoint (from training or `w2v import`)")
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--fp16", action="store_true",
                   help="also write the fp16 variant (normalization and softmax kept in fp32; for GPUs)")
    p.add_argument("--int8", action="store_true",
                   help="also write the int8 variant (ONNX Runtime dynamic quantization; for CPUs)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the export-time checks (ONNX checker, TensorRT ops, parity with PyTorch)")
    p.add_argument("--no-precision-check", action="store_true",
                   help="do not run the short precision check for this CPU after the export (it picks the "
                        "fastest precision that keeps the model's answers; without it the first `w2v transcribe` "
                        "or `w2v serve` with --precision auto runs it; W2V_PRECISION_CHECK=0 skips it everywhere)")
    p.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset, >= 17 (default 17)")
    p.add_argument("--name", metavar="NAME",
                   help="the model's name in its card: what `w2v serve` serves it as (default: the directory's name)")
    p.add_argument("--language-code", metavar="CODE",
                   help="the model's language in its card, BCP-47 such as en-US (`w2v serve` assumes en-US)")
    p.add_argument("--external-data", action="store_true",
                   help="store each graph's weights in an ONNX external data file (GRAPH.onnx.data) beside it; "
                        "automatic when the weights reach protobuf's 2 GB limit (XLS-R 1B/2B, MMS-1B)")
    p.add_argument("--repository", metavar="DIR",
                   help="also write a Triton model repository for this model directory")
    p.set_defaults(func=handler("export.exporter:cmd_export"))
