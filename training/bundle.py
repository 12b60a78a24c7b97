"""The last step of the default-model recipe: evaluate an exported model directory on the dev and
test sets (greedy, and beam search with the recipe's LM), record data, training and results in
its model card, and copy it to where ``--model`` finds it by default.

    python -m training.bundle --model runs/default_model/export --corpus data/synth \\
        --lm runs/default_model/lm/lm.arpa --train-dir runs/default_model/finetune \\
        --train-dir runs/default_model/finetune_more --out w2v_serve/models/default
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from training.evaluate import evaluate
from w2v_serve.decoding import DEFAULT_ALPHA, DEFAULT_BETA, DecoderOptions
from w2v_serve.lm import unigrams_path_for
from w2v_serve.model_dir import ModelDirectory

BEAM_WIDTH = 64
ALPHAS = (0.3, 0.5, 0.8, 1.2)
BETAS = (0.0, 1.0, 2.0, 3.0)
STOPPED_GAP_S = 600.0  # metrics rows are at most a few minutes apart while a run is going


def _training_summary(train_dir: Path) -> dict:
    """What one run's own metrics file says: updates, training time, last dev scores, config."""
    metrics = train_dir / "metrics.jsonl"
    out: dict = {"run": str(train_dir)}
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        train_rows = [r for r in rows if r.get("split", "train") == "train"]
        if train_rows:
            out["updates"] = train_rows[-1].get("update")
            costed = [r for r in train_rows if "cpu_s" in r]  # logged since the trainer keeps its cost
            if costed:
                out["cpu_minutes"] = round(costed[-1]["cpu_s"] / 60, 1)
        times = [r["time"] for r in rows if "time" in r]
        if len(times) > 1:
            # Busy time: gaps longer than STOPPED_GAP_S are the run being stopped and resumed.
            busy = sum(b - a for a, b in zip(times, times[1:]) if b - a < STOPPED_GAP_S)
            out["training_minutes"] = round(busy / 60, 1)
            out["wall_clock_minutes"] = round((times[-1] - times[0]) / 60, 1)
        valid = [r for r in rows if r.get("split") == "valid"]
        if valid:
            out["last_dev_eval"] = valid[-1]
    config = train_dir / "finetune_config.yaml"
    if config.exists():
        out["config"] = config.read_text()
    return out


def tune_lm(model_dir: Path, manifest: Path, lm: Path, limit: int | None = None) -> dict:
    """LM weight (alpha) and word bonus (beta) for beam search, chosen on the dev set by WER."""
    grid = []
    for alpha in ALPHAS:
        for beta in BETAS:
            r = evaluate(model_dir, manifest, limit=limit, decoder=DecoderOptions(
                method="beam", beam_width=BEAM_WIDTH, lm=str(lm), alpha=alpha, beta=beta))
            grid.append({"alpha": alpha, "beta": beta, "wer": r["wer"], "cer": r["cer"]})
    best = min(grid, key=lambda g: (g["wer"], g["cer"]))
    return {"alpha": best["alpha"], "beta": best["beta"], "grid": grid}


def bundle(model_dir: Path, corpus: Path, out: Path, lm: Path | None, train_dirs: list[Path],
           limit: int | None = None, notes: str = "", tune: bool = True) -> dict:
    model = ModelDirectory.load(model_dir)
    results: dict = {}
    decoding: dict = {}
    if lm is not None:
        tuned = tune_lm(model_dir, corpus / "dev.tsv", lm, limit) if tune else {"alpha": DEFAULT_ALPHA,
                                                                                 "beta": DEFAULT_BETA}
        unigrams = unigrams_path_for(lm)
        decoding = {"lm": lm.name, "unigrams": unigrams.name if unigrams.exists() else None,
                    "alpha": tuned["alpha"], "beta": tuned["beta"], "beam_width": BEAM_WIDTH,
                    "tuned_on": "dev set WER" if tune else "not tuned (pyctcdecode defaults)",
                    **({"grid": tuned["grid"]} if tune else {})}
    for split in ("dev", "test"):
        manifest = corpus / f"{split}.tsv"
        results[f"{split}_greedy"] = evaluate(model_dir, manifest, limit=limit)
        if lm is not None:
            results[f"{split}_beam{BEAM_WIDTH}_lm"] = evaluate(
                model_dir, manifest, limit=limit, decoder=DecoderOptions(
                    method="beam", beam_width=BEAM_WIDTH, lm=str(lm), alpha=decoding["alpha"],
                    beta=decoding["beta"]))
        for variant in sorted(set(model.card.variants) - {"fp32"}):
            results[f"{split}_greedy_{variant}"] = evaluate(model_dir, manifest, limit=limit, variant=variant)
    corpus_info = json.loads((corpus / "corpus.json").read_text()) if (corpus / "corpus.json").exists() else {}
    model.card.extra.update({
        "purpose": "working default and test fixture; trained on synthetic espeak-ng speech only, "
                   "not meant for real voices (import a published checkpoint for those)",
        "data": {"corpus": "w2v data synth (espeak-ng, Debian fortunes sentences)",
                 "splits": corpus_info.get("splits"), "seed": corpus_info.get("seed"),
                 "held_out_voices": corpus_info.get("held_out_voices")},
        "training": {"stages": [_training_summary(d) for d in train_dirs]},
        "results": results,
        "notes": notes,
    })
    model.card.extra.pop("lm", None)  # the card's `decoding` section names the LM, not `extra`
    model.card.decoding = decoding
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
    p.add_argument("--train-dir", type=Path, action="append", default=[],
                   help="a training run folder (metrics.jsonl); repeat for each stage, in order")
    p.add_argument("--limit", type=int)
    p.add_argument("--notes", default="")
    p.add_argument("--no-tune", action="store_true", help="keep pyctcdecode's alpha/beta instead of tuning on dev")
    args = p.parse_args(argv)
    results = bundle(args.model, args.corpus, args.out, args.lm, args.train_dir, args.limit, args.notes,
                     tune=not args.no_tune)
    card = ModelDirectory.load(args.out).card
    if card.decoding:
        print(f"LM weights tuned on dev: alpha {card.decoding['alpha']}, beta {card.decoding['beta']}")
    for name, r in results.items():
        print(f"{name:>16}: CER {100 * r['cer']:.2f}%  WER {100 * r['wer']:.2f}%  ({r['utterances']} utterances)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
