"""``w2v precision-check``: which precisions of a model keep its answers (argmax agreement with
fp32 ONNX Runtime on speech, w2v_serve.precision), and which is fastest; the record goes beside the
model card, where ``--precision auto`` reads it.

    w2v precision-check                                   # the bundled model, 6 espeak-ng utterances
    w2v precision-check --model DIR --audio a.wav --audio b.flac --espeak 0
"""

from __future__ import annotations

import argparse
import json
import sys

from w2v_serve.cli import CommandError, handler


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("precision-check", help="argmax agreement and speed of each runtime/precision vs fp32",
                       description="Run the model under each runtime (onnxruntime, openvino when installed) and "
                                   "precision (fp32, bf16, int8) on speech; a precision passes when its frame "
                                   "argmax agrees with fp32 ONNX Runtime on at least --threshold of the frames. "
                                   "Writes its record into precision_check.json beside the model card, beside the "
                                   "records of other kinds of CPU (one of the same kind is replaced); the engine's "
                                   "default precision is the fastest one that passed on this kind of CPU.")
    p.add_argument("--model", metavar="DIR", help="model directory (default: the bundled model)")
    p.add_argument("--audio", action="append", default=[], metavar="FILE",
                   help="speech to check on (repeatable; FILE.txt beside it, if any, is its transcript)")
    p.add_argument("--espeak", type=int, default=6, metavar="N",
                   help="also N espeak-ng utterances in several voices (default 6; 0: none)")
    p.add_argument("--threshold", type=float, default=None, metavar="X",
                   help="least share of frames whose argmax must agree (default 0.995)")
    p.add_argument("--runtime", action="append", choices=("onnxruntime", "openvino"), default=None,
                   help="runtimes to check (repeatable; default: onnxruntime and openvino when installed)")
    p.add_argument("--precision", action="append", default=None, metavar="P",
                   help="precisions to check (repeatable; default: fp32, bf16, int8)")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="inference threads (default: all cores)")
    p.add_argument("--out", metavar="FILE", help="write the record into this file (default: DIR/precision_check.json)")
    p.add_argument("--no-write", action="store_true", help="print the record only")
    p.set_defaults(func=handler("w2v_serve.cli.precision:cmd_precision_check"))


def cmd_precision_check(args: argparse.Namespace) -> int:
    from w2v_serve.audio import load_audio
    from w2v_serve.model_dir import ModelDirectory, default_model_dir
    from w2v_serve.precision import CHECKED_PRECISIONS, THRESHOLD, check_precisions, espeak_utterances, write_record

    path = args.model or default_model_dir()
    if path is None:
        raise CommandError("no --model given and this installation has no bundled default model")
    model = ModelDirectory.load(path)
    speech = [(f, load_audio(f, model.card.sample_rate), _text_beside(f)) for f in args.audio]
    if args.espeak:
        speech += espeak_utterances(args.espeak, model.card.sample_rate)
    if not speech:
        raise CommandError("no speech to check on: give --audio FILE or --espeak N")
    record = check_precisions(model, [a for _, a, _ in speech], names=[n for n, _, _ in speech],
                              texts=[t for _, _, t in speech],
                              runtimes=args.runtime, precisions=args.precision or CHECKED_PRECISIONS,
                              threshold=THRESHOLD if args.threshold is None else args.threshold,
                              threads=args.threads)
    print(json.dumps(record, indent=2))
    for runtime, results in record["results"].items():
        for precision, r in results.items():
            state = ("passed" if r["passed"] else "REJECTED") if r["available"] else f"unavailable ({r['reason']})"
            detail = f" agreement {100 * r['agreement']:.2f}%  RTF {r['rtf']:.4f}" if r["available"] else ""
            if r.get("nan_values"):
                detail += f"  ({r['reason']})"
            if "wer_greedy" in r:
                detail += "  WER " + "  ".join(f"{k[4:]} {100 * v:.1f}%" for k, v in r.items()
                                               if k.startswith("wer_") and k != "wer_utterances")
            print(f"{runtime:12s} {precision:5s} {state}{detail}", file=sys.stderr)
    print(f"default precision: {record['default']}", file=sys.stderr)
    if not args.no_write:
        try:
            target = write_record(model, record, args.out)
        except OSError as e:
            raise CommandError(f"cannot write the record ({e}); pass --out FILE or --no-write") from e
        print(f"wrote {target}", file=sys.stderr)
    return 0


def _text_beside(audio: str):
    """The transcript of FILE.wav in FILE.txt, if there is one."""
    from pathlib import Path

    txt = Path(audio).with_suffix(".txt")
    return txt.read_text(encoding="utf-8").strip() if txt.is_file() else None
