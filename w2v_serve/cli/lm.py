"""``w2v lm build``: an n-gram language model (ARPA + its unigram list) for beam search."""

from __future__ import annotations

import argparse
import sys

from w2v_serve.cli import handler
from w2v_serve.lm import DEFAULT_LEXICON_LOGPROB, SMOOTHING, build_lm
from w2v_serve.model_dir import ModelDirectory


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm", help="n-gram language models for beam search")
    lm_sub = p.add_subparsers(dest="lm_command", required=True, metavar="{build}")
    b = lm_sub.add_parser("build", help="estimate an ARPA n-gram LM (IRSTLM) plus its unigram list from text")
    b.add_argument("texts", nargs="+", metavar="TEXT", help="text files, one sentence per line")
    b.add_argument("--order", "-n", type=int, default=3, metavar="N", help="n-gram order (default 3)")
    b.add_argument("--out", required=True, metavar="FILE", help="ARPA file to write (unigrams go beside it)")
    b.add_argument("--model", metavar="DIR", help="fold case to this model directory's vocabulary")
    b.add_argument("--case", choices=("lower", "upper", "keep"), default=None,
                   help="case folding when no --model is given (default lower)")
    b.add_argument("--smoothing", choices=SMOOTHING, default=SMOOTHING[0])
    b.add_argument("--lexicon", metavar="FILE", help="word list (one per line, e.g. /usr/share/dict/words) "
                   "whose words beam search may spell although the text lacks them")
    b.add_argument("--lexicon-logprob", type=float, default=DEFAULT_LEXICON_LOGPROB, metavar="LOG10P",
                   help=f"log10 probability of each lexicon-only word (default {DEFAULT_LEXICON_LOGPROB})")
    b.set_defaults(func=handler("w2v_serve.cli.lm:cmd_build"))


def cmd_build(args) -> int:
    case = args.case or "lower"
    if args.model:
        case = "upper" if ModelDirectory.load(args.model).vocab.is_uppercase else "lower"
    arpa, unigrams, smoothing = build_lm(args.texts, args.out, order=args.order, case=case, smoothing=args.smoothing,
                                         lexicon=args.lexicon, lexicon_logprob=args.lexicon_logprob)
    n = sum(1 for _ in open(unigrams, encoding="utf-8"))
    print(f"wrote {arpa} ({args.order}-gram ARPA, {smoothing} smoothing) and {unigrams} ({n} words)", file=sys.stderr)
    return 0
