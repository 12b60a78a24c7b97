"""Which precisions keep a model's answers, and which of them is fastest.

A precision (fp32, bf16 on OpenVINO, the int8 graph variant, ...) is kept for a runtime only if
its frame-by-frame argmax agrees with the reference, fp32 ONNX Runtime on CPU, on at least
``THRESHOLD`` (99.5%) of the frames of real speech run through a *trained* model (a random model's
near-uniform logits say nothing about accuracy). The record, ``precision_check.json`` beside the
model card, holds per runtime and precision: the agreement, whether it passed, the real-time factor
measured in the same run, and the greedy transcript of the first utterance; the Engine's default
precision (``--precision auto``) is the fastest one that passed for its runtime, among those this
machine can run; and with ``--runtime auto`` on the kind of CPU the check ran on (same model and
vector extensions), the engine takes the fastest runtime too.

    w2v precision-check [--model DIR] [--audio FILE]... [--espeak N]

Where the utterances' texts are known (espeak-ng sentences; a FILE.wav with FILE.txt beside it)
each precision's word error rate on them is recorded too, greedy and with the model's default
decoder. What it cannot tell: the change of word error rate on a full test set (run ``w2v eval
--precision P`` on a labeled manifest for that).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from w2v_serve.audio import load_audio
from w2v_serve.decoding import CTCDecoder, DecoderOptions
from w2v_serve.engine import BF16, Engine, EngineOptions, fastest_passing, precision_available
from w2v_serve.model_dir import PRECISION_CHECK_NAME, ModelDirectory, read_precision_checks, write_text_atomic
from w2v_serve.scoring import error_counts, normalize_for_scoring
from w2v_serve.sessions import CPU_ONLY, ONNXRUNTIME, OPENVINO, EngineError, machine_signature, openvino_available

FORMAT = "w2v-precision-check"
FILE_FORMAT = "w2v-precision-checks"      # the file: one record per kind of CPU checked
VERSION = 1
THRESHOLD = 0.995
CHECKED_PRECISIONS = ("fp32", BF16, "int8")
REFERENCE = (ONNXRUNTIME, "fp32")

# Speech for the check when no files are given: espeak-ng sentences in several voices.
ESPEAK_SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "never put off until tomorrow what you can do today",
    "a journey of a thousand miles begins with a single step",
    "all that glitters is not gold",
    "the early bird catches the worm but the second mouse gets the cheese",
    "you can lead a horse to water but you cannot make it drink",
    "every cloud has a silver lining",
    "actions speak louder than words",
)
ESPEAK_VOICES = ("en-us", "en-gb+f3", "en-us+m3", "en-029", "en-gb-scotland+f2", "en-us+klatt")


class PrecisionCheckError(RuntimeError):
    """The check cannot run (no speech, no reference)."""


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_utterances(count: int, sample_rate: int = 16000) -> list[tuple[str, np.ndarray, str]]:
    """``count`` espeak-ng utterances (sentence i in voice i mod len(voices)) as (name, audio, text)."""
    if not espeak_available():
        raise PrecisionCheckError("espeak-ng is not installed (apt-get install espeak-ng), and no --audio given")
    out = []
    with tempfile.TemporaryDirectory(prefix="w2v-precision-") as tmp:
        for i in range(count):
            text = ESPEAK_SENTENCES[i % len(ESPEAK_SENTENCES)]
            voice = ESPEAK_VOICES[i % len(ESPEAK_VOICES)]
            path = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out.append((f"espeak-ng -v {voice} {text!r}", load_audio(path, sample_rate), text))
    return out


def argmax_agreement(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> tuple[int, int]:
    """(frames whose argmax agrees, frames) over utterances of [frames, vocab] scores."""
    same = total = 0
    for r, o in zip(reference, other):
        if r.shape != o.shape:
            raise PrecisionCheckError(f"output shapes differ: {r.shape} vs {o.shape}")
        same += int((r.argmax(-1) == o.argmax(-1)).sum())
        total += len(r)
    return same, total


def nan_values(outputs: Sequence[np.ndarray]) -> int:
    """NaN values over utterances' outputs. A NaN frame's argmax is 0 (the blank), so agreement
    alone would count such frames as agreeing wherever the reference is blank: a precision with
    any NaN fails outright (OpenVINO's bf16 on an AMX Xeon gave all-NaN output for the bundled model)."""
    return int(sum(np.isnan(o).sum() for o in outputs))


def _log_probs(engine: Engine, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [engine.log_probs(a) for a in audios]


def _timed_rtfs(engines: dict, audios: Sequence[np.ndarray], seconds: float, repeats: int) -> dict:
    """Real-time factor of each engine: the best of ``repeats`` rounds, the engines timed one after
    another within each round (interleaved, so load from elsewhere hits them alike)."""
    best = {key: float("inf") for key in engines}
    for _ in range(repeats):
        for key, engine in engines.items():
            start = time.perf_counter()
            _log_probs(engine, audios)
            best[key] = min(best[key], time.perf_counter() - start)
    return {key: t / seconds for key, t in best.items()}


def check_precisions(model: ModelDirectory | str | Path, audios: Sequence[np.ndarray], *,
                     names: Optional[Sequence[str]] = None, texts: Optional[Sequence[Optional[str]]] = None,
                     runtimes: Optional[Iterable[str]] = None,
                     precisions: Iterable[str] = CHECKED_PRECISIONS, threshold: float = THRESHOLD,
                     threads: int = 0, repeats: int = 5) -> dict:
    """Agreement and speed of every (runtime, precision) against fp32 ONNX Runtime; the record.

    runtimes: default onnxruntime and, when installed, openvino. A precision that cannot run here
    (no such graph variant, no bf16 in this CPU) is recorded as unavailable with the reason.
    texts: the utterances' transcripts where known; each precision's word error rate on those
    (greedy decoding, and the model's default decoder) is recorded beside the reference's."""
    model = model if isinstance(model, ModelDirectory) else ModelDirectory.load(model)
    if not audios:
        raise PrecisionCheckError("no speech to check on")
    names = list(names) if names is not None else [f"audio {i}" for i in range(len(audios))]
    runtimes = list(runtimes) if runtimes is not None else \
        [ONNXRUNTIME] + ([OPENVINO] if openvino_available() else [])
    precisions = list(precisions)
    seconds = sum(len(a) for a in audios) / model.card.sample_rate
    decoder = CTCDecoder(model.vocab, DecoderOptions(method="greedy"), frame_seconds=model.card.frame_seconds)

    def engine(runtime: str, precision: str) -> Engine:
        return Engine(model, EngineOptions(runtime=runtime, variant=precision, threads=threads, providers=CPU_ONLY))

    reference_engine = engine(*REFERENCE)
    reference = _log_probs(reference_engine, audios)
    scorer = _WordErrors(model, texts)
    results: dict[str, dict[str, dict]] = {}
    engines: dict[tuple[str, str], Engine] = {}
    for runtime in runtimes:
        results[runtime] = {}
        for precision in precisions:
            reason = precision_available(model, precision, runtime)
            if reason is None:
                try:
                    eng = reference_engine if (runtime, precision) == REFERENCE else engine(runtime, precision)
                except EngineError as e:
                    reason = str(e)
            if reason is not None:
                results[runtime][precision] = {"available": False, "reason": reason, "passed": False}
                continue
            engines[(runtime, precision)] = eng
            out = _log_probs(eng, audios)           # also the warm-up of the timing below
            same, total = argmax_agreement(reference, out)
            agreement = same / max(1, total)
            nans = nan_values(out)
            entry = {"available": True, "agreement": round(agreement, 5), "frames": total,
                     "passed": agreement >= threshold and not nans}
            if nans:    # nothing to decode: NaN log-probs are a DecoderError
                entry.update(nan_values=nans, reason=f"the outputs hold {nans} NaN values")
            else:
                entry.update(first_transcript=decoder.decode(out[0]).text, **scorer.rates(out))
            entry["inference_precision"] = getattr(eng.session, "inference_precision", None)
            results[runtime][precision] = entry
    for (runtime, precision), rtf in _timed_rtfs(engines, audios, seconds, repeats).items():
        results[runtime][precision]["rtf"] = round(rtf, 5)
    defaults = {rt: fastest_passing(res, model, rt) or "fp32" for rt, res in results.items()}
    fastest = min(((results[rt][p]["rtf"], rt, p) for rt, p in defaults.items() if results[rt][p].get("rtf")),
                  default=None)
    return {
        "format": FORMAT, "version": VERSION, "threshold": threshold,
        "reference": f"{REFERENCE[0]} {REFERENCE[1]} on CPU",
        "machine": _machine(threads),
        "versions": _versions(),
        "data": {"utterances": len(audios), "seconds": round(seconds, 2),
                 "frames": sum(len(r) for r in reference), "sources": names,
                 "reference_first_transcript": decoder.decode(reference[0]).text,
                 "reference_word_errors": scorer.rates(reference)},
        "results": results,
        "default": defaults,
        "fastest": {"runtime": fastest[1], "precision": fastest[2]} if fastest else None,
        "notes": ("agreement: share of frames whose argmax equals fp32 ONNX Runtime's; rtf: seconds of compute "
                  "per audio second, best of the interleaved rounds of this check (one utterance per run); default: the "
                  "fastest precision that passed, per runtime. Word error rate change on a full test set is not "
                  "measured here: run `w2v eval --precision P` on a labeled manifest."),
    }


class _WordErrors:
    """Word error rates of log-probs on the utterances whose text is known: greedy, and the
    model's default decoder (beam search with its own LM when it ships one)."""

    def __init__(self, model: ModelDirectory, texts: Optional[Sequence[Optional[str]]]) -> None:
        from w2v_serve.decoding import options_for_model

        self.known = [i for i, t in enumerate(texts or ()) if t]
        self.refs = [normalize_for_scoring(texts[i]) for i in self.known] if texts else []
        fs = model.card.frame_seconds
        self.decoders = {"greedy": CTCDecoder(model.vocab, DecoderOptions(method="greedy"), frame_seconds=fs)}
        default = options_for_model(model.path)
        if self.known and default.method != "greedy":
            self.decoders["default_decoder"] = CTCDecoder(model.vocab, default, frame_seconds=fs)

    def rates(self, log_probs: Sequence[np.ndarray]) -> dict:
        if not self.known:
            return {}
        out = {}
        for name, decoder in self.decoders.items():
            hyps = [normalize_for_scoring(decoder.decode(log_probs[i]).text) for i in self.known]
            counts = error_counts(self.refs, hyps)
            out[f"wer_{name}"] = round(counts["word_errors"] / max(1, counts["words"]), 4)
        out["wer_utterances"] = len(self.known)
        return out


def write_record(model: ModelDirectory, record: dict, path: Optional[str | Path] = None) -> Path:
    """Writes ``record`` into the model's precision check file (or ``path``) beside the records of
    other kinds of CPU already there; a record of the same kind of CPU is replaced."""
    import json

    from w2v_serve.engine import same_machine

    target = Path(path) if path else model.path / PRECISION_CHECK_NAME
    others = [r for r in read_precision_checks(target) if not same_machine(r, record["machine"])]
    data = {"format": FILE_FORMAT, "version": 1, "records": [*others, record]}
    return write_text_atomic(target, json.dumps(data, indent=2) + "\n")


def _machine(threads: int) -> dict:
    out = {**machine_signature(), "cores": os.cpu_count(), "threads": threads or os.cpu_count()}
    if openvino_available():
        from w2v_serve.sessions import _ov_core

        out["openvino_capabilities"] = list(_ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return out


def _versions() -> dict:
    import onnxruntime

    out = {"onnxruntime": onnxruntime.__version__}
    if openvino_available():
        import openvino

        out["openvino"] = openvino.__version__
    return out
