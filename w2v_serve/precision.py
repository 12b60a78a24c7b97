"""Which precisions keep a model's answers, and which of them is fastest.

A precision (fp32, bf16 on OpenVINO, the int8 graph variant, ...) is kept for a runtime only if
its frame-by-frame argmax agrees with the reference, fp32 ONNX Runtime on CPU, on at least
``THRESHOLD`` (99.5%) of the frames the reference *decides*: those whose best label leads the
runner-up by at least ``DECIDED_MARGIN`` (0.5 nats, a probability ratio of 1.65). A frame closer
than that is a near-tie that any rounding may break either way and that no decoder relies on; a
trained model decides most of its frames, a model with flat logits (random init) few. With fewer
than ``MIN_DECIDED_FRAMES`` decided frames every frame counts. The record,
``precision_check.json`` beside the model card, holds per runtime and precision: the agreement
(and ``agreement_all_frames``), whether it passed, the real-time factor
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
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from w2v_serve.audio import load_audio
from w2v_serve.decoding import CTCDecoder, DecoderOptions
from w2v_serve.engine import BF16, Engine, EngineOptions, fastest_passing, precision_available
from w2v_serve.model_dir import (PRECISION_CHECK_NAME, ModelDirectory, ModelDirError, read_precision_checks,
                                 write_text_atomic)
from w2v_serve.scoring import error_counts, normalize_for_scoring
from w2v_serve.sessions import CPU_ONLY, ONNXRUNTIME, OPENVINO, EngineError, machine_signature, openvino_available

FORMAT = "w2v-precision-check"
FILE_FORMAT = "w2v-precision-checks"      # the file: one record per kind of CPU checked
VERSION = 1
THRESHOLD = 0.995
DECIDED_MARGIN = 0.5          # nats between the reference's best and second-best label
MIN_DECIDED_FRAMES = 20
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


def argmax_agreement(reference: Sequence[np.ndarray], other: Sequence[np.ndarray],
                     margin: float = 0.0) -> tuple[int, int]:
    """(frames whose argmax agrees, frames) over utterances of [frames, vocab] log-probs,
    counting only the frames where the reference's best label leads its second by ``margin``
    or more (0: every frame)."""
    same = total = 0
    for r, o in zip(reference, other):
        if r.shape != o.shape:
            raise PrecisionCheckError(f"output shapes differ: {r.shape} vs {o.shape}")
        top2 = np.partition(r, -2, axis=-1)[:, -2:] if r.shape[-1] > 1 else np.zeros((len(r), 2))
        counted = top2[:, 1] - top2[:, 0] >= margin
        same += int(((r.argmax(-1) == o.argmax(-1)) & counted).sum())
        total += int(counted.sum())
    return same, total


def decided_agreement(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> dict:
    """The pass figure: agreement on the frames the reference decides (see the module's
    docstring), and on every frame."""
    same_all, frames = argmax_agreement(reference, other)
    same, decided = argmax_agreement(reference, other, DECIDED_MARGIN)
    if decided < MIN_DECIDED_FRAMES:
        same, decided = same_all, frames
    return {"agreement": round(same / max(1, decided), 5), "frames": frames, "decided_frames": decided,
            "agreement_all_frames": round(same_all / max(1, frames), 5)}


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
                     threads: int = 0, repeats: int = 5,
                     exclude: Iterable[tuple[str, str]] = ()) -> dict:
    """Agreement and speed of every (runtime, precision) against fp32 ONNX Runtime; the record.

    runtimes: default onnxruntime and, when installed, openvino. A precision that cannot run here
    (no such graph variant, no bf16 in this CPU) is recorded as unavailable with the reason.
    texts: the utterances' transcripts where known; each precision's word error rate on those
    (greedy decoding, and the model's default decoder) is recorded beside the reference's.
    exclude: (runtime, precision) pairs not run (recorded as not checked)."""
    model = model if isinstance(model, ModelDirectory) else ModelDirectory.load(model)
    if not audios:
        raise PrecisionCheckError("no speech to check on")
    names = list(names) if names is not None else [f"audio {i}" for i in range(len(audios))]
    runtimes = list(runtimes) if runtimes is not None else \
        [ONNXRUNTIME] + ([OPENVINO] if openvino_available() else [])
    precisions = list(precisions)
    exclude = set(exclude)
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
            if (runtime, precision) in exclude:
                reason = "not checked (left out of this check)"
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
            nans = nan_values(out)
            entry = {"available": True, **decided_agreement(reference, out)}
            entry["passed"] = entry["agreement"] >= threshold and not nans
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
        "decided_margin": DECIDED_MARGIN,
        "notes": ("agreement: share of the frames fp32 ONNX Runtime decides (best label ahead of the second by "
                  f"{DECIDED_MARGIN} nats or more; every frame when fewer than {MIN_DECIDED_FRAMES}) whose argmax "
                  "equals its; agreement_all_frames: the share over every frame; rtf: seconds of compute "
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
    other kinds of CPU already there; a record of the same kind of CPU is replaced, and so is a
    file that cannot be read (its records are lost either way)."""
    import json

    from w2v_serve.engine import same_machine, valid_record

    target = Path(path) if path else model.path / PRECISION_CHECK_NAME
    try:
        existing = read_precision_checks(target)
    except (ModelDirError, UnicodeDecodeError):
        existing = []
    others = [r for r in existing if valid_record(r) and not same_machine(r, record["machine"])]
    data = {"format": FILE_FORMAT, "version": 1, "records": [*others, record]}
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(target, json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------------------- the automatic check
AUTO_CHECK_ENV = "W2V_PRECISION_CHECK"       # 0 / off / no / false: never run the check unasked
AUTO_UTTERANCES = 3                         # espeak-ng utterances (about 7 s of speech)
AUTO_REPEATS = 2                            # timed rounds (interleaved, best of)
# Left out of the automatic check: OpenVINO running ONNX Runtime's int8 graphs was 1.3-2.3x
# slower than OpenVINO fp32 on every CPU and model measured (docs/precision.md); `w2v
# precision-check` still measures it.
AUTO_EXCLUDED = ((OPENVINO, "int8"),)


def auto_check_disabled() -> bool:
    return os.environ.get(AUTO_CHECK_ENV, "").strip().lower() in ("0", "off", "no", "false")


def ensure_precision_record(model: ModelDirectory | str | Path, *, runtime: str = "auto", precision: str = "auto",
                            providers: Optional[Sequence[str]] = None, trigger: str = "first use",
                            threads: int = 0, log=None) -> Optional[dict]:
    """Makes sure ``model`` has a precision check record for this kind of CPU, so that ``auto``
    precision runs the fast precision the check picks; returns the record (None when no check
    applies or none could run).

    Nothing happens (None) when a precision is given, when a CUDA/TensorRT provider is wanted and
    present (the check measures CPU runtimes), or when ``W2V_PRECISION_CHECK=0``. A record of this
    kind of CPU already there (beside the card or in the user cache) is returned as it is.
    Otherwise a short check runs (``AUTO_UTTERANCES`` espeak-ng utterances, ``AUTO_REPEATS`` timed
    rounds, the runtimes and precisions of ``check_precisions`` but ``AUTO_EXCLUDED``), its record
    is written atomically beside the card, or into the user cache when the model directory is not
    writable (``engine.precision_cache_path``), and one line on ``log`` (default stderr) says what
    was chosen and why. An unreadable record file is ignored with a warning and the check redone.
    Without espeak-ng there is no speech to check on: one line says so, and the engine keeps fp32."""
    from w2v_serve.engine import (choose_runtime_and_precision, precision_cache_path, read_records,
                                  same_machine)
    from w2v_serve.sessions import AUTO, gpu_providers_present

    log = log or sys.stderr
    if precision != AUTO or gpu_providers_present(providers) or auto_check_disabled():
        return None
    model = model if isinstance(model, ModelDirectory) else ModelDirectory.load(model)
    records, _ = read_records(model)         # unreadable files: warned about here, replaced below
    here = machine_signature()
    for record in records:
        if same_machine(record, here):
            return record
    if not espeak_available():
        print(f"w2v: no precision check for this CPU ({here['cpu']}): espeak-ng is not installed, so precision "
              "stays fp32 (install espeak-ng, or run `w2v precision-check --audio FILE`)", file=log)
        return None
    start = time.perf_counter()
    speech = espeak_utterances(AUTO_UTTERANCES, model.card.sample_rate)
    runtimes = [ONNXRUNTIME] + ([OPENVINO] if openvino_available() else [])
    record = check_precisions(model, [a for _, a, _ in speech], names=[n for n, _, _ in speech],
                              texts=[t for _, _, t in speech], runtimes=runtimes, threads=threads,
                              repeats=AUTO_REPEATS, exclude=AUTO_EXCLUDED)
    record["trigger"] = trigger
    record["seconds"] = round(time.perf_counter() - start, 1)
    target = model.path / PRECISION_CHECK_NAME
    try:
        write_record(model, record, target)
    except OSError:
        target = precision_cache_path(model)
        try:
            write_record(model, record, target)
        except OSError as e:
            target = None
            print(f"w2v: warning: cannot keep the precision check record ({e}); it will run again", file=log)
    chosen_rt, chosen_p = choose_runtime_and_precision(model, runtime, precision, providers)
    print(f"w2v: {explain_choice(record, chosen_rt, chosen_p)} [precision check on this CPU, {trigger}, "
          f"{record['seconds']:.0f} s; record {target or 'not kept'}; {AUTO_CHECK_ENV}=0 skips it]", file=log)
    return record


def explain_choice(record: dict, runtime: str, precision: str) -> str:
    """One line: the runtime and precision chosen from ``record`` and why (its speed against fp32
    ONNX Runtime and its agreement with it, and the precisions rejected for changing the answers)."""
    results = record.get("results", {})
    chosen = results.get(runtime, {}).get(precision, {})
    ref = results.get(REFERENCE[0], {}).get(REFERENCE[1], {})
    if (runtime, precision) == REFERENCE:
        why = ["the reference; nothing that kept the answers ran faster"]
    else:
        why = []
        if chosen.get("rtf") and ref.get("rtf"):
            why.append(f"{ref['rtf'] / chosen['rtf']:.2f}x the speed of {REFERENCE[0]} fp32")
        if chosen.get("agreement") is not None:
            why.append(f"same frame labels as it on {100 * chosen['agreement']:.1f}% of the frames it decides")
    rejected = [f"{rt} {p} ({100 * r['agreement']:.1f}%)" if r.get("agreement") is not None else f"{rt} {p}"
                for rt, res in results.items() for p, r in res.items() if r.get("available") and not r.get("passed")]
    if rejected:
        why.append(f"rejected below {100 * record.get('threshold', THRESHOLD):.1f}%: {', '.join(rejected)}")
    return f"runs {runtime} {precision} ({'; '.join(why)})"


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
