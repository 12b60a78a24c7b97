"""``w2v eval``: a model directory on a labeled manifest, through the runtime (the same path as
``w2v transcribe``): character and word error rates, per decoder setting.

    w2v eval --model DIR data/synth/test.tsv                      # greedy
    w2v eval --model DIR data/synth/test.tsv --decoder beam --lm lm.arpa
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from training.manifest import read_manifest


def normalize_for_scoring(text: str) -> str:
    return " ".join(text.lower().split())


def evaluate(model_dir: str | Path, manifest: str | Path, *, decoder=None, limit: Optional[int] = None,
             details: Optional[str | Path] = None, variant: str = "fp32") -> dict:
    from training.metrics import error_counts
    from w2v_serve.decoding import DecoderOptions
    from w2v_serve.engine import EngineOptions
    from w2v_serve.transcribe import Transcriber

    utts = [u for u in read_manifest(manifest) if u.text is not None][:limit]
    if not utts:
        raise ValueError(f"{manifest}: no labeled utterances")
    transcriber = Transcriber(model_dir, decoder=decoder or DecoderOptions(),
                              engine_options=EngineOptions(variant=variant))
    start = time.perf_counter()
    results = list(transcriber.transcribe_iter([u.path for u in utts]))
    elapsed = time.perf_counter() - start
    refs = [normalize_for_scoring(u.text or "") for u in utts]
    hyps = [normalize_for_scoring(r.text) for r in results]
    failed = [r for r in results if not r.ok]
    counts = error_counts(refs, hyps)
    audio_s = sum(u.num_samples for u in utts) / 16000
    if details:
        with open(details, "w", encoding="utf-8") as f:
            for u, ref, hyp in zip(utts, refs, hyps):
                f.write(json.dumps({"path": str(u.path), "ref": ref, "hyp": hyp}) + "\n")
    return {
        "utterances": len(utts), "failed": len(failed), "audio_hours": round(audio_s / 3600, 3),
        "cer": round(counts["char_errors"] / max(1, counts["chars"]), 4),
        "wer": round(counts["word_errors"] / max(1, counts["words"]), 4),
        "real_time_factor": round(elapsed / audio_s, 4), **counts,
    }


def add_parser(sub: argparse._SubParsersAction, handler) -> None:
    p = sub.add_parser("eval", help="character/word error rates of a model directory on a labeled manifest")
    p.add_argument("manifest", help="labeled manifest: fairseq .tsv (+ .wrd/.ltr) or .jsonl with text")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--decoder", choices=("greedy", "beam"),
                   help="default: greedy, beam with --lm; beam uses the model's own LM when it ships one")
    p.add_argument("--beam-width", type=int, default=64)
    p.add_argument("--lm", metavar="FILE", help="KenLM/ARPA language model (beam)")
    p.add_argument("--no-lm", action="store_true", help="beam search without the model's own LM")
    p.add_argument("--alpha", type=float, help="LM weight (default: the card's tuned value, else 0.5)")
    p.add_argument("--beta", type=float, help="word insertion bonus (default: tuned value, else 1.0)")
    p.add_argument("--variant", default="fp32", help="graph variant from the model card (fp32, fp16, int8)")
    p.add_argument("--limit", type=int, help="first N utterances only")
    p.add_argument("--details", metavar="FILE", help="write ref/hyp pairs as JSON lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=handler("training.evaluate:cmd_eval"))


def cmd_eval(args: argparse.Namespace) -> int:
    from w2v_serve.decoding import options_for_model

    decoder = options_for_model(args.model, method=args.decoder, beam_width=args.beam_width, lm=args.lm,
                                no_lm=args.no_lm, alpha=args.alpha, beta=args.beta)
    summary = evaluate(args.model, args.manifest, decoder=decoder, limit=args.limit, details=args.details,
                       variant=args.variant)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['utterances']} utterances ({summary['audio_hours']} h), {summary['failed']} failed: "
              f"CER {100 * summary['cer']:.2f}%  WER {100 * summary['wer']:.2f}%  "
              f"(RTF {summary['real_time_factor']})", file=sys.stdout)
    return 0 if not summary["failed"] else 1
