"""Long recordings cut at pauses against overlapping windows, with the bundled model: word error
rate and model time, side by side in one run.

Recordings: the held-out corpus of ``bench decoding`` (espeak-ng sentences in the model card's
held-out voices) joined into recordings of about ``--seconds`` each, sentences back to back as
espeak-ng writes them (its own short silences at each end) with a pause of 0.2-0.8 s between
them; the same recordings over steady white noise at 25 dB and 10 dB SNR (at 10 dB most pauses
are too close to the speech's level for the pause finder, w2v_serve.pauses, and it falls back
to windows there). Each recording is transcribed with the model's default decoder
(``options_for_model``: beam search + its LM) by ``Transcriber`` with
``EngineOptions(cut_at_pauses=True)`` (the default) and ``False`` (30 s windows with 1 s of
context each side); model time is the engine's own (``Engine.infer``), medians of rounds.

    python -m bench segments                  # 120 sentences, recordings of ~60 s, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Optional

import numpy as np

from bench.timing import SAMPLE_RATE

SNRS_DB = (25, 10)


def recordings(audio: list[np.ndarray], texts: list[str], seconds: float, seed: int = 0):
    """Sentences joined with 0.2-0.8 s pauses into recordings of about ``seconds``: (audio, text) pairs."""
    rng = np.random.default_rng(seed)
    out, parts, sentences = [], [], []
    for a, text in zip(audio, texts):
        parts += [a.astype(np.float32), np.zeros(int(rng.uniform(0.2, 0.8) * SAMPLE_RATE), np.float32)]
        sentences.append(text)
        if sum(len(p) for p in parts) >= seconds * SAMPLE_RATE:
            out.append((np.concatenate(parts), " ".join(sentences)))
            parts, sentences = [], []
    if parts:
        out.append((np.concatenate(parts), " ".join(sentences)))
    return out


def with_noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    speech = audio[np.abs(audio) > 1e-4]
    level = np.sqrt(np.mean(speech ** 2)) if len(speech) else 1.0
    noisy = audio + level * 10 ** (-snr_db / 20) * rng.standard_normal(len(audio))
    return (noisy / max(1.0, float(np.abs(noisy).max()))).astype(np.float32)


def run(model_dir, sets: dict, rounds: int) -> dict:
    from w2v_serve.decoding import options_for_model
    from w2v_serve.engine import EngineOptions
    from w2v_serve.scoring import error_counts
    from w2v_serve.transcribe import Transcriber

    out: dict = {}
    decoder = options_for_model(model_dir)
    transcribers = {name: Transcriber(model_dir, decoder=decoder, engine_options=EngineOptions(cut_at_pauses=cut))
                    for name, cut in (("pauses", True), ("windows", False))}
    for label, recs in sets.items():
        result: dict = {"recordings": len(recs), "audio_seconds": round(sum(len(a) for a, _ in recs) / SAMPLE_RATE, 1)}
        times: dict[str, list[float]] = {k: [] for k in transcribers}
        hyps: dict[str, list[str]] = {}
        for _ in range(rounds):
            for name, t in transcribers.items():
                spent = [0.0]
                infer = t.engine.infer

                def timed(*args, **kwargs):
                    start = time.process_time()
                    try:
                        return infer(*args, **kwargs)
                    finally:
                        spent[0] += time.process_time() - start
                t.engine.infer = timed
                try:
                    hyps[name] = [t.transcribe(a).text for a, _ in recs]
                finally:
                    del t.engine.infer
                times[name].append(spent[0])
        refs = [text for _, text in recs]
        for name in transcribers:
            c = error_counts(refs, hyps[name])
            result[name] = {"wer": round(c["word_errors"] / c["words"], 4), "words": c["words"],
                            "model_cpu_seconds": round(statistics.median(times[name]), 2)}
        result["model_cpu_pauses_vs_windows"] = round(result["pauses"]["model_cpu_seconds"]
                                                      / result["windows"]["model_cpu_seconds"], 3)
        out[label] = result
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench segments")
    parser.add_argument("--sentences", type=int, default=120, help="held-out sentences (default 120)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each recording (default 60)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, interleaved (default 3)")
    args = parser.parse_args(argv or [])
    from bench.bench_decoding import _corpus
    from w2v_serve.audio import load_audio
    from w2v_serve.transcribe import _bundled_model

    load_before = os.getloadavg()
    rows, _ = _corpus(args.sentences)
    clean = recordings([load_audio(r["wav"]) for r in rows], [r["text"] for r in rows], args.seconds)
    sets = {"clean": clean}
    for snr in SNRS_DB:
        sets[f"noise_{snr}db"] = [(with_noise(a, snr, seed=i), text) for i, (a, text) in enumerate(clean)]
    result = run(_bundled_model(), sets, args.rounds)
    result["load_average"] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]}
    for label in sets:
        r = result[label]
        print(f"{label}: {r['recordings']} recordings, {r['audio_seconds']} s")
        for name in ("pauses", "windows"):
            print(f"  {name:8s} WER {100 * r[name]['wer']:.2f}% of {r[name]['words']} words, "
                  f"model {r[name]['model_cpu_seconds']} CPU-s")
        print(f"  model CPU, pauses / windows: {r['model_cpu_pauses_vs_windows']}x")
    print(f"  load average before/after: {result['load_average']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
