"""The bundled default model vs pocketsphinx (its wheel's English model) on the held-out synthetic
test set (sentences and voice settings never used in training), same utterances, same run.

Needs the corpus (``make default-model`` makes it, or ``w2v data synth --out data/synth`` with
the recipe's settings) and the bundled model. Word error rate after lower-casing and collapsing
whitespace; pocketsphinx's output is scored the same way.
"""

from __future__ import annotations

from typing import Optional

import os
import time
from pathlib import Path

import numpy as np

from training.evaluate import evaluate
from w2v_serve.scoring import normalize_for_scoring
from training.manifest import read_manifest
from w2v_serve.scoring import error_counts
from w2v_serve.audio import load_audio
from w2v_serve.decoding import options_for_model
from w2v_serve.model_dir import default_model_dir

ROOT = Path(__file__).resolve().parent.parent
TEST = Path(os.environ.get("W2V_BENCH_TEST_MANIFEST", ROOT / "data" / "synth" / "test.tsv"))
LIMIT = int(os.environ.get("W2V_BENCH_LIMIT", "300"))


def pocketsphinx_wer(manifest: Path, limit: int) -> dict:
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, logfn=os.devnull)
    utts = [u for u in read_manifest(manifest) if u.text][:limit]
    hyps = []
    start = time.perf_counter()
    for u in utts:
        pcm = (np.clip(load_audio(u.path), -1, 1) * 32767).astype(np.int16)
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        hyps.append(normalize_for_scoring(hyp.hypstr if hyp else ""))
    elapsed = time.perf_counter() - start
    counts = error_counts([normalize_for_scoring(u.text or "") for u in utts], hyps)
    audio_s = sum(u.num_samples for u in utts) / 16000
    return {"utterances": len(utts), "wer": round(counts["word_errors"] / counts["words"], 4),
            "cer": round(counts["char_errors"] / counts["chars"], 4), "real_time_factor": round(elapsed / audio_s, 4)}


def main(argv: Optional[list[str]] = None) -> dict:
    if argv:
        raise SystemExit(f"python -m bench default_model takes no options (got {' '.join(argv)})")
    model = default_model_dir()
    if model is None or not TEST.exists():
        raise RuntimeError(f"needs the bundled default model and the test set {TEST} (make default-model)")
    rows = {"w2v greedy": evaluate(model, TEST, limit=LIMIT)}
    beam = options_for_model(model, method="beam", beam_width=64)  # its own LM, tuned alpha/beta
    if beam.lm:
        rows["w2v beam 64 + LM"] = evaluate(model, TEST, limit=LIMIT, decoder=beam)
    rows["pocketsphinx 5 (en-us)"] = pocketsphinx_wer(TEST, LIMIT)
    for name, r in rows.items():
        print(f"{name:>24}: WER {100 * r['wer']:6.2f}%  CER {100 * r['cer']:6.2f}%  RTF {r['real_time_factor']:.3f}"
              f"  ({r['utterances']} utterances)")
    return rows
