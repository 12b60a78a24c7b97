"""The acoustic model at run time: an inference session over a model directory's ``model.onnx``.

* Runtime (``EngineOptions.runtime``): ``auto`` runs OpenVINO on CPU when it is installed and no
  CUDA/TensorRT provider is there, else ONNX Runtime; ``onnxruntime`` / ``openvino`` force one.
  ONNX Runtime's execution providers: TensorRT, then CUDA, then CPU, whichever its build has
  (sessions are made in w2v_serve.sessions).
* Precision (``EngineOptions.variant``): ``fp32``, ``bf16`` (the fp32 graph with OpenVINO's bf16
  inference, on CPUs that have it), ``int8`` / ``fp16`` (the card's graph variants), or ``auto``:
  the fastest precision that passed the model's precision check (``precision_check.json`` beside
  the card, written by ``w2v precision-check``, a record per kind of CPU) for this runtime on this
  kind of CPU, else fp32.
* Batches: rows padded to the longest, with ``lengths`` so each row gets the result it gets alone;
  ``plan_batches`` groups inputs of similar length (length buckets) so little compute is padding.
* Long recordings (longer than ``window_s``) run as a sequence of segments whose kept frames
  tile the recording's frame grid exactly. A segment ends at a pause (w2v_serve.pauses) between
  ``segment_min_s`` and ``segment_max_s`` after its start: the model then sees silence on both
  sides of the cut, so neither side needs context and no audio runs twice, and a segment of
  8-16 s costs less per second than a 30 s window (attention grows with the square of its
  length). Where no pause is found, the segment is a window of ``window_s`` with ``context_s`` of
  overlap on each side of its kept frames, the frames whose own context reaches ``context_s``
  into both neighbours (``cut_at_pauses=False``: windows throughout). ``stream_log_probs`` takes
  the audio as a stream of blocks and yields the stitched frames as they are ready, so memory
  stays bounded by one batch of windows whatever the duration.

Output is log-probabilities [frames, vocab] per input (log-softmax applied here when the card says
the graph emits raw logits).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from w2v_serve.model_dir import (CARD_NAME, FULL_GRAPH, PRECISION_CHECK_NAME, ModelDirectory, ModelDirError,
                                 read_precision_checks)
from w2v_serve.pauses import find_pause
from w2v_serve.sessions import (AUTO, ONNXRUNTIME, OPENVINO, OPENVINO_PROVIDER, EngineError, cache_root,
                                gpu_providers_present, machine_signature, open_session, openvino_available,
                                openvino_supports_bf16, resolve_runtime)

BF16 = "bf16"
GPU_MAX_BATCH_SECONDS = 120.0
CPU_MAX_BATCH_SECONDS = 30.0
PRECISIONS = ("fp32", BF16, "fp16", "int8")      # what --precision offers (besides auto)
MACHINE_KEYS = ("cpu", "cpu_flags")              # sessions.machine_signature: a kind of CPU


@dataclass(frozen=True)
class EngineOptions:
    variant: str = AUTO                      # precision: auto, fp32, bf16 (OpenVINO), int8, fp16, or any
                                             # graph variant of the model card
    runtime: str = AUTO                      # auto, onnxruntime, openvino (sessions.resolve_runtime)
    providers: Optional[tuple[str, ...]] = None   # default: sessions.PROVIDER_PREFERENCE ∩ available
    threads: int = 0                         # intra-op threads; 0 = onnxruntime's choice (all cores)
    batch_size: int = 8                      # rows per run (short files, or segments of a long one)
    max_batch_seconds: Optional[float] = None  # and at most this much padded audio per run (memory:
                                             # attention grows with rows x length^2); default 120 s
                                             # on GPUs, 30 s on CPU (one window: batching windows
                                             # costs CPU runtimes ~40% more per audio second, measured
                                             # on the default model, 2 threads)
    window_s: float = 30.0                   # recordings longer than this run in segments
    context_s: float = 1.0                   # overlap on each side of a window's kept frames: 1.07x
                                             # the compute of no overlap with 30 s windows (2 s: 1.15x);
                                             # measured no worse in WER (docs/engine.md, "Window context")
    pad_multiple: int = 0                    # pad batch length to a multiple of this many samples
                                             # (0: the frame stride; TensorRT: 1 s, fewer engine shapes)
    cut_at_pauses: bool = True               # long recordings: segments cut at pauses (no overlap),
                                             # overlapping windows where no pause is found
    segment_min_s: float = 8.0               # a pause cut ends a segment this long at the shortest
    segment_max_s: float = 16.0              # and this long at the longest (8-16 s: about the
                                             # length of the utterances models are fine-tuned on)
    segment_pad_s: float = 0.5               # segments padded to a multiple of this (fewer input
                                             # shapes: a runtime prepares each new one, ~0.1 s)


def graph_variant(precision: str) -> str:
    """The card's graph variant a precision runs: bf16 is the fp32 graph run in bf16."""
    return "fp32" if precision == BF16 else precision


def inference_precision(precision: str) -> Optional[str]:
    """What a precision asks of the runtime itself (``open_session(precision=...)``): bf16 is run
    in bf16 by OpenVINO; every other precision is a graph variant run as it is (None)."""
    return BF16 if precision == BF16 else None


def precision_available(model: ModelDirectory, precision: str, runtime: str) -> Optional[str]:
    """None when ``precision`` can run here with ``runtime``, else the reason it cannot."""
    if precision == BF16:
        if runtime != OPENVINO:
            return "bf16 runs on the openvino runtime only"
        if not openvino_supports_bf16():
            return "this CPU has no native bf16 (AMX or AVX512_BF16)"
        return None
    if precision not in model.card.variants:
        return f"the model has no {precision!r} graph variant (has {sorted(model.card.variants)})"
    return None


def resolve_precision(model: ModelDirectory, requested: str, runtime: str,
                      providers: Optional[Sequence[str]] = None) -> str:
    """The precision to run: ``requested`` itself (checked that it can run), or for ``auto`` the
    fastest precision the model's precision check passed for ``runtime`` on CPU that can run here;
    fp32 when the model has no check, and on GPU providers (the check measures CPU runtimes)."""
    if requested != AUTO:
        reason = precision_available(model, requested, runtime)
        if reason:
            raise EngineError(f"{model.path}: cannot run precision {requested!r}: {reason}")
        return requested
    if runtime == ONNXRUNTIME and gpu_providers_present(providers):
        return "fp32"
    record = precision_record(model) or {}
    return fastest_passing(record.get("results", {}).get(runtime, {}), model, runtime) or "fp32"


def fastest_passing(results: dict, model: ModelDirectory, runtime: str) -> Optional[str]:
    """The precision with the lowest real-time factor among those that passed for ``runtime`` and
    can run here (``results``: a precision check record's ``results[runtime]``)."""
    passed = [(r["rtf"], p) for p, r in results.items()
              if r.get("passed") and r.get("rtf") and precision_available(model, p, runtime) is None]
    return min(passed)[1] if passed else None


def same_machine(record: dict, here: Optional[dict] = None) -> bool:
    """Whether a precision check record ran on this kind of CPU (same model and vector extensions:
    its speeds, and its int8/bf16 arithmetic, apply here)."""
    machine = record.get("machine") or {}
    here = here or machine_signature()
    return bool(machine) and all(machine.get(k) == here.get(k) for k in MACHINE_KEYS)


def precision_cache_path(model: ModelDirectory) -> Path:
    """Where a precision check record of ``model`` goes when its directory is not writable (the
    bundled model in a read-only installation): ``$XDG_CACHE_HOME/w2v/precision/KEY.json``, KEY
    from the directory's resolved path and its model card's bytes (so a re-export gets a new key)."""
    import hashlib

    try:
        card = (model.path / CARD_NAME).read_bytes()
    except OSError:
        card = b""
    key = hashlib.sha256(str(model.path.resolve()).encode() + b"\0" + card).hexdigest()[:16]
    return cache_root() / "precision" / f"{key}.json"


def valid_record(record: object) -> bool:
    """Whether a precision check record has the shape the engine reads: ``results`` {runtime:
    {precision: {passed, rtf, ...}}} with numeric speeds, and a ``machine`` mapping (or null)."""
    if not isinstance(record, dict) or not isinstance(record.get("results"), dict):
        return False
    if not isinstance(record.get("machine"), (dict, type(None))):
        return False
    for per_runtime in record["results"].values():
        if not isinstance(per_runtime, dict):
            return False
        for entry in per_runtime.values():
            if not isinstance(entry, dict) or not isinstance(entry.get("rtf", 0.0), (int, float, type(None))):
                return False
    return True


_WARNED: set = set()


def read_records(model: ModelDirectory, warn: bool = True) -> tuple[list[dict], list[str]]:
    """The precision check records of ``model``: those beside its card, then those in its user
    cache file (``precision_cache_path``). A file that cannot be read, or a record of the wrong
    shape, is left out; the second value says what was left out and why (and, with ``warn``, is
    written once per process to stderr)."""
    records, problems = [], []
    for path in (model.path / PRECISION_CHECK_NAME, precision_cache_path(model)):
        try:
            found = read_precision_checks(path)
        except (ModelDirError, OSError, UnicodeDecodeError) as e:
            problems.append(f"{path}: ignored, unreadable ({e})")
            continue
        bad = [r for r in found if not valid_record(r)]
        if bad:
            problems.append(f"{path}: ignored {len(bad)} malformed record(s)")
        records += [r for r in found if valid_record(r)]
    if warn:
        for problem in problems:
            if problem not in _WARNED:
                _WARNED.add(problem)
                print(f"w2v: warning: precision check record {problem}", file=sys.stderr)
    return records, problems


def precision_record(model: ModelDirectory) -> Optional[dict]:
    """The model's precision check record for this kind of CPU. On a CPU never checked, one record
    made of all of them: a precision passes only where it passed on every CPU checked (int8 and
    bf16 kernels differ with the vector extensions, and so does their agreement), with
    the most recent record's speeds. Records come from ``read_records`` (beside the card, then
    the user cache; unreadable ones left out with a warning)."""
    records, _ = read_records(model)
    here = machine_signature()
    for record in records:
        if same_machine(record, here):
            return record
    if len(records) <= 1:
        return records[0] if records else None
    merged = {**records[-1], "machine": None,
              "results": {rt: {p: dict(r) for p, r in res.items()} for rt, res in records[-1]["results"].items()}}
    for rt, res in merged["results"].items():
        for p, r in res.items():
            r["passed"] = all(o.get("results", {}).get(rt, {}).get(p, {}).get("passed", False) for o in records)
    return merged


def measured_here(model: ModelDirectory) -> bool:
    """Whether the model's precision check ran on this kind of CPU (its speeds apply here)."""
    record = precision_record(model)
    return record is not None and same_machine(record)


def choose_runtime_and_precision(model: ModelDirectory, runtime: str = AUTO, precision: str = AUTO,
                                 providers: Optional[Sequence[str]] = None) -> tuple[str, str]:
    """(runtime, precision) to run. ``runtime`` auto: ``sessions.resolve_runtime``'s rule (OpenVINO
    on CPU when installed), except that when the model's precision check was measured on this kind
    of CPU, the runtime whose fastest passing precision (``precision`` itself when one is asked
    for) measured fastest there wins. Then ``resolve_precision``."""
    chosen = resolve_runtime(runtime, providers)
    if runtime == AUTO and not gpu_providers_present(providers) and measured_here(model):
        results = precision_record(model)["results"]                  # type: ignore[index]
        options = []
        for rt in (ONNXRUNTIME, OPENVINO):
            if rt == OPENVINO and not openvino_available():
                continue
            p = fastest_passing(results.get(rt, {}), model, rt) if precision == AUTO else precision
            r = results.get(rt, {}).get(p or "", {})
            if p and r.get("passed") and r.get("rtf") and precision_available(model, p, rt) is None:
                options.append((r["rtf"], rt))
        if options:
            chosen = min(options)[1]
    return chosen, resolve_precision(model, precision, chosen, providers)


@dataclass(frozen=True)
class Segment:
    """One model run of a long recording: ``audio`` from sample ``start`` (a multiple of the frame
    stride); its frames are kept up to recording frame ``stop_frame`` (None: to the end)."""

    start: int
    audio: np.ndarray
    stop_frame: Optional[int]


class BatchPlan:
    """An engine's window geometry and batch planning, without a session: ``Engine`` is one; a
    stage that plans the batches an engine elsewhere runs (``w2v transcribe --ray``) makes one
    from the model card (``cpu``: whether that engine runs on the CPU)."""

    def __init__(self, card, options: EngineOptions, cpu: bool = True):
        self.options = options
        self.sample_rate = card.sample_rate
        self.stride = card.frame_stride
        self.receptive_field = card.receptive_field
        self.frame_seconds = card.frame_seconds
        self._cpu = cpu
        # Window geometry in samples, all multiples of the stride (frames align across windows).
        self.context = max(1, round(options.context_s * self.sample_rate / self.stride)) * self.stride
        window = max(round(options.window_s * self.sample_rate / self.stride) * self.stride, 4 * self.context)
        self.hop = window - 2 * self.context
        self.window = window
        # int8 graphs quantize activations with one scale per tensor, computed at run time over the
        # whole batch (padding included): batched with a louder file, a file's output changes. An
        # engine running them keeps one input per run, so each output depends on its input alone.
        self.one_row_per_run = False

    @property
    def rows_per_run(self) -> int:
        return 1 if self.one_row_per_run else self.options.batch_size

    def num_frames(self, n_samples: int) -> int:
        """Frames the conv encoder gives for ``n_samples`` (0 below one receptive field)."""
        return 0 if n_samples < self.receptive_field else (n_samples - self.receptive_field) // self.stride + 1

    def is_long(self, n_samples: int) -> bool:
        return n_samples > self.window

    def plan_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into batches of similar length (sorted, then cut every batch_size rows);
        long inputs (windowed) are left out."""
        order = sorted((i for i, n in enumerate(lengths) if not self.is_long(n)), key=lambda i: lengths[i])
        batches: list[list[int]] = []
        for i in order:
            # Sorted ascending, so row i is the longest: the batch pads every row to its length.
            if batches and len(batches[-1]) < self.rows_per_run and \
                    (len(batches[-1]) + 1) * lengths[i] <= self.max_batch_samples:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    @property
    def max_batch_samples(self) -> int:
        seconds = self.options.max_batch_seconds
        if seconds is None:
            # Local CPU sessions: one window per run. GPUs (and a remote Triton model): batches.
            seconds = max(CPU_MAX_BATCH_SECONDS, self.window / self.sample_rate) if self._cpu else GPU_MAX_BATCH_SECONDS
        return int(seconds * self.sample_rate)


class Engine(BatchPlan):
    """Runs ``model.onnx`` of a model directory on batches and on arbitrarily long audio."""

    def __init__(self, model: ModelDirectory | str | Path, options: EngineOptions = EngineOptions()):
        self.model = model if isinstance(model, ModelDirectory) else ModelDirectory.load(model)
        super().__init__(self.model.card, options)
        self.runtime, self.precision = choose_runtime_and_precision(self.model, options.runtime, options.variant,
                                                                    options.providers)
        self.variant = graph_variant(self.precision)
        self.one_row_per_run = self.variant == "int8"
        self.session = self._open_session(self.model.graph_path(FULL_GRAPH, self.variant))
        self.providers = tuple(self.session.get_providers())    # what the runtime actually uses
        self._cpu = self.providers[0] in ("CPUExecutionProvider", OPENVINO_PROVIDER)
        pad = options.pad_multiple or (self.sample_rate if self.providers[0].startswith("Tensorrt") else self.stride)
        self.pad_multiple = max(self.stride, pad - pad % self.stride)

    def _open_session(self, path: Path):
        session = open_session(path, runtime=self.runtime, providers=self.options.providers,
                               threads=self.options.threads, fp16=self.variant == "fp16",
                               precision=inference_precision(self.precision))
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if not {"audio", "lengths"} <= inputs or not {"logits", "logit_lengths"} <= outputs:
            raise EngineError(f"{path}: expected inputs audio, lengths and outputs logits, logit_lengths; "
                              f"got {sorted(inputs)} -> {sorted(outputs)}")
        return session

    # ------------------------------------------------------------------ inference
    def infer(self, batch: Sequence[np.ndarray], pad_multiple: Optional[int] = None) -> list[np.ndarray]:
        """One session run over mono float32 arrays; log-probs [frames_i, vocab] per array. The
        run's length is padded to a multiple of ``pad_multiple`` samples (default: the engine's)."""
        if not batch:
            return []
        if self.one_row_per_run and len(batch) > 1:
            return [out for a in batch for out in self.infer([a], pad_multiple)]
        lengths = np.array([len(a) for a in batch], dtype=np.int64)
        if lengths.min() < self.receptive_field:
            short = int(lengths.argmin())
            raise EngineError(f"input {short} has {lengths[short]} samples; the model needs at least "
                              f"{self.receptive_field} ({1000 * self.receptive_field / self.sample_rate:.0f} ms)")
        pad = max(self.pad_multiple, pad_multiple or 0)
        width = -(-int(lengths.max()) // pad) * pad
        audio = np.zeros((len(batch), width), dtype=np.float32)
        for row, a in zip(audio, batch):
            row[: len(a)] = a
        logits, logit_lengths = self.session.run(["logits", "logit_lengths"], {"audio": audio, "lengths": lengths})
        if not self.model.card.logits_are_log_probs:
            logits = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        return [logits[i, : int(logit_lengths[i])] for i in range(len(batch))]

    def log_probs(self, audio: np.ndarray) -> np.ndarray:
        """Log-probs of one recording of any length (windows when it is long)."""
        if not self.is_long(len(audio)):
            return self.infer([audio])[0]
        return np.concatenate([chunk for _, chunk in self.stream_log_probs([audio])], axis=0)

    def stream_log_probs(self, blocks: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """Stitched log-probs of the recording whose samples ``blocks`` yields in order.

        Yields ``(first_frame, log_probs)`` chunks that tile the recording's frames in order. Holds at
        most one run's segments (``batch_size``, within ``max_batch_seconds``) of audio at a time.
        """
        bs = max(1, min(self.rows_per_run, self.max_batch_samples // self.window))
        pad = None
        if self.options.cut_at_pauses:
            pad = self.stride * max(1, round(self.options.segment_pad_s * self.sample_rate / self.stride))
        next_frame = 0       # first frame not yet emitted
        runs: list[Segment] = []

        def run() -> Iterator[tuple[int, np.ndarray]]:
            nonlocal next_frame
            for segment, lp in zip(runs, self.infer([r.audio for r in runs], pad_multiple=pad)):
                first = segment.start // self.stride
                stop = len(lp) if segment.stop_frame is None else segment.stop_frame - first
                chunk = lp[next_frame - first:stop]
                if len(chunk):
                    yield next_frame, chunk
                    next_frame += len(chunk)

        for segment in self.segments(blocks):
            runs.append(segment)
            if len(runs) == bs:
                yield from run()
                runs = []
        yield from run()

    def segments(self, blocks: Iterable[np.ndarray]) -> Iterator[Segment]:
        """The runs a recording (its samples streamed as ``blocks``) is cut into: each keeps the
        frames from where the previous one stopped up to its ``stop_frame`` (the last: to the
        end). See the module docstring for where the cuts fall."""
        stride, ctx, window = self.stride, self.context, self.window
        lo = int(self.options.segment_min_s * self.sample_rate)
        hi = int(self.options.segment_max_s * self.sample_rate)
        pending: list[np.ndarray] = []
        held = 0             # samples in buffer and pending
        buffer = np.zeros(0, dtype=np.float32)
        base = 0             # recording sample index of buffer[0]
        cut = 0              # where the next segment's kept frames start (a multiple of the stride)
        overlap = False      # whether the previous cut was a window's (the next needs left context)
        ended = False
        source = iter(blocks)
        while True:
            first = cut - (ctx if overlap else 0)
            # Audio up to one window past the segment's first sample, or all there is.
            while not ended and base + held < first + window + ctx:
                try:
                    pending.append(np.asarray(next(source), dtype=np.float32))
                    held += len(pending[-1])
                except StopIteration:
                    ended = True
            if pending:
                buffer = np.concatenate([buffer, *pending])
                pending = []
            buffer, base = buffer[first - base:], first
            held = len(buffer)
            n = base + len(buffer)
            stop = None
            if self.options.cut_at_pauses and (not ended or n - cut > hi):
                # Leave at least half a minimum segment after the cut.
                last = min(cut + hi, n - lo // 2) if ended else cut + hi
                if last > cut + lo:
                    pause = find_pause(buffer[:last - base + ctx], cut + lo - base, last - base, self.sample_rate)
                    if pause is not None:
                        stop = (base + pause) // stride * stride
            if stop is not None:
                # The kept frames' receptive fields end receptive_field - stride samples past the cut.
                end = stop + self.receptive_field - stride
                yield Segment(first, buffer[: end - base], stop // stride)
                cut, overlap = stop, False
                continue
            if ended and n - first <= window:
                if n - first >= self.receptive_field:
                    yield Segment(first, buffer, None)
                return
            stop = first + window - ctx
            yield Segment(first, buffer[: window], stop // stride)
            cut, overlap = stop, True
