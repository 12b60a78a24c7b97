"""The last step of the default-model recipe: evaluate an exported model directory on the dev and
test sets (greedy, and beam search with the recipe's LM), record data, training and results in
its model card, and copy it to where ``--model`` finds it by default.

    python -m training.bundle --model runs/default_model/export --corpus data/synth \\
        --lm runs/default_model/export/lm.arpa --train-dir runs/default_model/finetune \\
        --out w2v_serve/models/default
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from training.evaluate import evaluate
from w2v_serve.decoding import DecoderOptions
from w2v_serve.model_dir import ModelDirectory


def _training_summary(train_dir: Path) -> dict:
    """What the run's own metrics file says: updates, hours of training, last dev scores."""
    metrics = train_dir / "metrics.jsonl"
    out: dict = {}
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        train_rows = [r for r in rows if r.get("split", "train") == "train"]
        if train_rows:
            out["updates"] = train_rows[-1].get("update")
        valid = [r for r in rows if r.get("split") == "valid"]
        if valid:
            out["last_dev_eval"] = valid[-1]
    config = train_dir / "finetune_config.yaml"
    if config.exists():
        out["config"] = config.read_text()
    return out


def bundle(model_dir: Path, corpus: Path, out: Path, lm: Path | None, train_dir: Path | None,
           limit: int | None = None, notes: str = "") -> dict:
    model = ModelDirectory.load(model_dir)
    results: dict = {}
    for split in ("dev", "test"):
        manifest = corpus / f"{split}.tsv"
        results[f"{split}_greedy"] = evaluate(model_dir, manifest, limit=limit)
        if lm is not None:
            results[f"{split}_beam64_lm"] = evaluate(
                model_dir, manifest, limit=limit,
                decoder=DecoderOptions(method="beam", beam_width=64, lm=str(lm)))
    corpus_info = json.loads((corpus / "corpus.json").read_text()) if (corpus / "corpus.json").exists() else {}
    model.card.extra.update({
        "purpose": "working default and test fixture; trained on synthetic espeak-ng speech only, "
                   "not meant for real voices (import a published checkpoint for those)",
        "data": {"corpus": "w2v data synth (espeak-ng, Debian fortunes sentences)",
                 "splits": corpus_info.get("splits"), "seed": corpus_info.get("seed"),
                 "held_out_voices": corpus_info.get("held_out_voices")},
        "training": _training_summary(train_dir) if train_dir else {},
        "results": results,
        "lm": lm.name if lm is not None else None,
        "notes": notes,
    })
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out)
    if lm is not None and lm.parent.resolve() != model_dir.resolve():
        for f in lm.parent.glob(lm.stem + "*"):
            shutil.copy2(f, out / f.name)
    ModelDirectory(out, model.card, model.vocab).write_card()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="exported model directory")
    p.add_argument("--corpus", required=True, type=Path, help="w2v data synth output (dev.tsv, test.tsv)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--lm", type=Path)
    p.add_argument("--train-dir", type=Path)
    p.add_argument("--limit", type=int)
    p.add_argument("--notes", default="")
    args = p.parse_args(argv)
    results = bundle(args.model, args.corpus, args.out, args.lm, args.train_dir, args.limit, args.notes)
    for name, r in results.items():
        print(f"{name:>16}: CER {100 * r['cer']:.2f}%  WER {100 * r['wer']:.2f}%  ({r['utterances']} utterances)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
