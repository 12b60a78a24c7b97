"""Flags that several commands share, defined once: decoding, the runtime, the precision, torch threads."""

from __future__ import annotations

import argparse

from w2v_serve.decoding import DEFAULT_BEAM_WIDTH, DEFAULT_HOTWORD_WEIGHT, METHODS, DecoderOptions, options_for_model

DECODER_HELP = ("greedy, or beam search with the model's own LM when it ships one; default: beam when the "
                "model ships an LM or --lm/--hotword is given, else greedy")


def add_decoder_flags(parser: argparse.ArgumentParser, *, hotwords: bool = True,
                      title: str = "decoding") -> None:
    """--decoder, --beam-width, --lm, --no-lm, --unigrams, --alpha, --beta, [--hotword], --hotword-weight."""
    dec = parser.add_argument_group(title)
    dec.add_argument("--decoder", choices=METHODS, help=DECODER_HELP)
    dec.add_argument("--beam-width", type=int, default=DEFAULT_BEAM_WIDTH, metavar="N")
    dec.add_argument("--lm", metavar="FILE", help="KenLM language model (ARPA or binary; `w2v lm build` makes one)")
    dec.add_argument("--no-lm", action="store_true", help="beam search without the model's own LM")
    dec.add_argument("--unigrams", metavar="FILE", help="the LM's word list (default: beside the LM)")
    dec.add_argument("--alpha", type=float, help="LM weight (default: the model card's tuned value for its own LM, "
                                                   "else 0.5)")
    dec.add_argument("--beta", type=float, help="word insertion bonus (default: tuned value, else 1.0)")
    if hotwords:
        dec.add_argument("--hotword", action="append", default=[], metavar="WORD",
                         help="boost a word or phrase (repeatable; beam search)")
    dec.add_argument("--hotword-weight", type=float, default=DEFAULT_HOTWORD_WEIGHT, metavar="X")


def decoder_options(args: argparse.Namespace, model) -> DecoderOptions:
    """The decoder options the flags of ``add_decoder_flags`` ask for, on this model directory."""
    return options_for_model(model, method=args.decoder, beam_width=args.beam_width, lm=args.lm,
                             no_lm=args.no_lm, unigrams=args.unigrams, alpha=args.alpha, beta=args.beta,
                             hotwords=tuple(getattr(args, "hotword", ()) or ()), hotword_weight=args.hotword_weight)


RUNTIME_CHOICES = ("auto", "onnxruntime", "openvino")     # w2v_serve.sessions.RUNTIMES
PRECISION_HELP = ("auto (default: the fastest precision that passed the model's precision check for the runtime, "
                  "else fp32), fp32, bf16 (openvino, on CPUs with AMX/AVX512_BF16), int8, fp16, or another graph "
                  "variant of the model card")


def add_runtime_flag(parser) -> None:
    """--runtime auto|onnxruntime|openvino (parser: an ArgumentParser or an argument group)."""
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                        help="inference runtime: auto (default: the faster one in the model's precision check when "
                             "it ran on this kind of CPU, else OpenVINO on CPU when installed, else ONNX Runtime), "
                             "onnxruntime, openvino (pip install 'w2v[openvino]')")


def add_variant_flag(parser) -> None:
    """--precision (alias --variant): which precision / graph variant of the model runs."""
    parser.add_argument("--precision", "--variant", dest="variant", default="auto", metavar="PRECISION",
                        help=PRECISION_HELP)


def add_torch_threads_flag(parser) -> None:
    """--threads N for the commands that run torch on the CPU (0: torch's own choice)."""
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="torch threads on CPU (default 0: torch's own choice)")
