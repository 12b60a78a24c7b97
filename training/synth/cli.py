"""``w2v data synth``: the command's handler (its parser is in w2v_serve/cli/data.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from training.synth.corpus import synthesize_corpus
from training.synth.engines import DEFAULT_ENGINES, ENGINES

def list_voices() -> str:
    lines = []
    for name, e in ENGINES.items():
        why = e.missing()
        lines.append(f"{name}: {'ok' if not why else 'MISSING: ' + why} ({len(e.voices())} voices)")
        lines.append("  " + " ".join(e.voices()))
    return "\n".join(lines)


def _csv(values: Sequence[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def cmd_synth(args: argparse.Namespace) -> int:
    if getattr(args, "list_voices", False):
        print(list_voices())
        return 0
    if not args.out:
        print("w2v data synth: --out DIR is required", file=sys.stderr)
        return 2
    explicit = args.held_out_engine is not None
    held_arg = args.held_out_engine if explicit else "festival"
    held = None if held_arg.lower() in ("none", "") else held_arg
    summary = synthesize_corpus(Path(args.out), num_train=args.train, num_dev=args.dev, num_test=args.test,
                                seed=args.seed, held_out_voices=args.held_out_voices, augment_share=args.augment,
                                workers=args.workers, text_sources=[Path(t) for t in args.text],
                                engines=_csv(args.engines or [",".join(DEFAULT_ENGINES)]), held_out_engine=held,
                                num_test_heldout=args.test_heldout, num_unlabeled=args.unlabeled,
                                augmentation=args.augmentation, text_builtin=_csv(args.text_source) or ["fortunes"])
    for f in summary["failed"]:
        print(f"skipped {f['path']}: {f['error']}", file=sys.stderr)
    if explicit and held and held not in summary["engines"]:
        print(f"note: the held-out engine {held} is not among --engines: no test_heldout_engine split", file=sys.stderr)
    if args.train > summary["sentence_pools"]["train"]:
        print(f"note: {args.train} training utterances over {summary['sentence_pools']['train']} sentences: "
              "sentences repeat with other voices", file=sys.stderr)
    if summary["rerendered_for_a_changed_plan"]:
        print(f"note: {summary['rerendered_for_a_changed_plan']} files in {args.out} were planned differently "
              "by another command and were rendered again", file=sys.stderr)
    print(f"engines: {', '.join(summary['engines'])} (held out: {summary['held_out_engine'] or 'none'}); "
          f"augmentation: {summary['augmentation']} on {summary['augment_share']:.0%} of train/unlabeled")
    for split, s in summary["splits"].items():
        print(f"{split}: {s['utterances']} utterances, {s['sentences']} sentences, {s['hours']} h")
    return 1 if summary["failed"] and not any(s["utterances"] for s in summary["splits"].values()) else 0
