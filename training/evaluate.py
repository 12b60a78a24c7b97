"""Evaluate a model directory on a labeled manifest through the runtime (the same path as
``w2v transcribe``): character and word error rates. The ``w2v eval`` command (w2v_serve.cli.evaluate)
and the default-model bundle (training.bundle) use it. Imports no torch."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from training.manifest import read_manifest
from w2v_serve.decoding import DecoderOptions
from w2v_serve.engine import EngineOptions
from w2v_serve.scoring import error_counts, normalize_for_scoring
from w2v_serve.transcribe import Transcriber


def evaluate(model_dir: str | Path, manifest: str | Path, *, decoder=None, limit: Optional[int] = None,
             details: Optional[str | Path] = None, variant: str = "fp32", runtime: str = "auto") -> dict:
    utts = [u for u in read_manifest(manifest) if u.text is not None][:limit]
    if not utts:
        raise ValueError(f"{manifest}: no labeled utterances")
    transcriber = Transcriber(model_dir, decoder=decoder or DecoderOptions(),
                              engine_options=EngineOptions(variant=variant, runtime=runtime))
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
