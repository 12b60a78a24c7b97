"""``w2v eval``: a model directory on a labeled manifest, through the runtime (the same path as
``w2v transcribe``): character and word error rates, per decoder setting.

    w2v eval --model DIR data/synth/test.tsv                      # the model's default decoder
    w2v eval --model DIR data/synth/test.tsv --decoder beam --lm lm.arpa
"""

from __future__ import annotations

import argparse
import json
import sys

from w2v_serve.cli import handler
from w2v_serve.cli.options import add_decoder_flags, add_runtime_flag, add_variant_flag, decoder_options


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="character/word error rates of a model directory on a labeled manifest")
    p.add_argument("manifest", help="labeled manifest: fairseq .tsv (+ .wrd/.ltr) or .jsonl with text")
    p.add_argument("--model", required=True, metavar="DIR")
    add_decoder_flags(p, hotwords=False)
    add_runtime_flag(p)
    add_variant_flag(p)
    p.add_argument("--limit", type=int, help="first N utterances only")
    p.add_argument("--details", metavar="FILE", help="write ref/hyp pairs as JSON lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=handler("w2v_serve.cli.evaluate:cmd_eval"))


def cmd_eval(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    decoder = decoder_options(args, args.model)
    summary = evaluate(args.model, args.manifest, decoder=decoder, limit=args.limit, details=args.details,
                       variant=args.variant, runtime=args.runtime)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['utterances']} utterances ({summary['audio_hours']} h), {summary['failed']} failed: "
              f"CER {100 * summary['cer']:.2f}%  WER {100 * summary['wer']:.2f}%  "
              f"(RTF {summary['real_time_factor']})", file=sys.stdout)
    return 0 if not summary["failed"] else 1
