"""The Python API for offline transcription.

    from w2v_serve.transcribe import Transcriber
    from w2v_serve.decoding import DecoderOptions

    t = Transcriber("model_dir", decoder=DecoderOptions(method="beam", lm="lm.arpa"))
    result = t.transcribe("call.wav")
    print(result.text, [(w.word, w.start_s, w.end_s, w.confidence) for w in result.words])
    for r in t.transcribe_iter(paths):          # input order, failures as results with .error
        ...

Inputs are file paths or float/int arrays (mono or [frames, channels]) at ``sample_rate``.
Files no longer than the engine's window are loaded whole and batched by length; longer ones are
streamed through the engine's segments (cut at pauses, or overlapping windows; w2v_serve.engine)
and their log-probabilities decoded in pieces cut at word boundaries, so memory is bounded
whatever the duration. A file that cannot be read becomes a result with ``error`` set; the others
are unaffected.
"""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import queue
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from w2v_serve.audio import AudioError, load_audio, probe, resample, stream_audio, validate_array
from w2v_serve.decoding import CTCDecoder, DecoderOptions, Transcript, Word, safe_cut_frame
from w2v_serve.engine import Engine, EngineOptions
from w2v_serve.model_dir import ModelDirectory, ModelDirError, default_model_dir
from w2v_serve.precision import ensure_precision_record
from w2v_serve.process import exit_with_parent

AudioInput = Union[str, Path, np.ndarray]
# Long recordings are decoded in segments of SEGMENT_MIN_S..SEGMENT_MAX_S, cut where no word is.
SEGMENT_MIN_S = 10.0
SEGMENT_MAX_S = 30.0
_STREAM_BLOCK_S = 10.0
CHUNK_BATCHES = 16           # transcribe_iter plans batches over this many batches' worth of inputs
DECODE_QUEUE = 64            # stitched log-prob chunks (one per window) waiting for the decoder

log = logging.getLogger("w2v.transcribe")


@dataclass(frozen=True)
class TranscriptionResult:
    """One input's transcript, or its error."""

    path: Optional[str]                 # the file, or None for an array
    text: str = ""
    words: tuple[Word, ...] = ()
    duration_s: float = 0.0
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "text": self.text, "duration_s": round(self.duration_s, 3),
                "words": [w.to_dict() for w in self.words]}

    def to_json(self) -> str:
        """The result's JSON-lines object (``w2v transcribe --format jsonl``), without the newline."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @staticmethod
    def from_dict(d: dict) -> "TranscriptionResult":
        """The inverse of ``to_dict`` (times as rounded there)."""
        if d.get("error") is not None:
            return TranscriptionResult(d.get("path"), error=d["error"])
        t = Transcript.from_dict(d)
        return TranscriptionResult(d.get("path"), t.text, t.words, float(d.get("duration_s", 0.0)))


@dataclass
class _Item:
    index: int
    source: AudioInput
    samples: int = 0                    # at the model's rate (estimated from the header for files)
    audio: Optional[np.ndarray] = field(default=None, repr=False)
    error: Optional[str] = None

    @property
    def path(self) -> Optional[str]:
        return None if isinstance(self.source, np.ndarray) else str(self.source)


class Transcriber:
    """Loads a model directory once; transcribes files or arrays, one or many at a time.

    ``engine`` may be any object with the ``Engine`` interface (``infer``, ``stream_log_probs``,
    ``plan_batches``, ``is_long``, ``sample_rate``, ``frame_seconds``, ``receptive_field``) -
    the seam for a remote (Triton) acoustic model.
    """

    def __init__(self, model: Union[str, Path, ModelDirectory, None] = None, *,
                 decoder: DecoderOptions = DecoderOptions(), engine_options: EngineOptions = EngineOptions(),
                 engine: Optional[Engine] = None, decode_workers: int = 0):
        if engine is None:
            model = _bundled_model() if model is None else model
            directory = model if isinstance(model, ModelDirectory) else ModelDirectory.load(model)
        else:
            directory = engine.model
        # Forked first, before this process starts the runtime's threads (see DecodePool), and
        # after the decoder is built: the workers inherit the loaded LM instead of loading it again.
        self._decode_pool: Optional[DecodePool] = None
        prebuilt = None
        if decode_workers > 0:
            prebuilt = CTCDecoder(directory.vocab, decoder, frame_seconds=directory.card.frame_seconds)
            self._decode_pool = DecodePool(directory.vocab, decoder, directory.card.frame_seconds, decode_workers)
        if engine is None:
            # Precision auto on a kind of CPU the model was never checked on: check it now (once,
            # recorded) so the engine below runs the fast precision (w2v_serve.precision).
            ensure_precision_record(directory, runtime=engine_options.runtime, precision=engine_options.variant,
                                    providers=engine_options.providers, threads=engine_options.threads)
        if prebuilt is not None:
            self.decoder = prebuilt
            engine = engine if engine is not None else Engine(directory, engine_options)
        elif engine is None:
            # The decoder (LM and word list, ~0.3 s) loads while the runtime compiles the graph
            # (~0.3-0.5 s, in native code that releases the GIL): start-up is the longer, not the sum.
            with ThreadPoolExecutor(1, thread_name_prefix="w2v-decoder-load") as pool:
                pending = pool.submit(CTCDecoder, directory.vocab, decoder, frame_seconds=directory.card.frame_seconds)
                engine = Engine(directory, engine_options)     # its error wins: the pool waits, then raises it
                self.decoder = pending.result()
        else:
            self.decoder = CTCDecoder(engine.model.vocab, decoder, frame_seconds=engine.frame_seconds)
        self.engine = engine
        self.vocab = engine.model.vocab
        self.sample_rate = engine.sample_rate
        self.batch_size = max(1, getattr(engine, "options", engine_options).batch_size)

    def close(self) -> None:
        """Stops the decode worker processes, if any (also at interpreter exit)."""
        if self._decode_pool is not None:
            self._decode_pool.close()
            self._decode_pool = None

    def __enter__(self) -> "Transcriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ API
    def transcribe(self, audio: AudioInput, *, sample_rate: Optional[int] = None,
                   hotwords: Optional[Sequence[str]] = None) -> TranscriptionResult:
        """One file or array. A bad input gives a result with ``error`` (never raises for it)."""
        return next(self.transcribe_iter([audio], sample_rate=sample_rate, hotwords=hotwords))

    def transcribe_batch(self, inputs: Sequence[AudioInput], **kwargs) -> list[TranscriptionResult]:
        return list(self.transcribe_iter(inputs, **kwargs))

    def transcribe_iter(self, inputs: Iterable[AudioInput], *, sample_rate: Optional[int] = None,
                        hotwords: Optional[Sequence[str]] = None,
                        on_result: Optional[Callable[[TranscriptionResult], None]] = None,
                        chunk_size: Optional[int] = None) -> Iterator[TranscriptionResult]:
        """Results in input order. Inputs are taken ``chunk_size`` at a time (default 16 batches),
        sorted by length into batches within a chunk, so output flows while memory stays small."""
        chunk_size = chunk_size or CHUNK_BATCHES * self.batch_size
        chunk: list[_Item] = []
        for i, source in enumerate(inputs):
            chunk.append(_Item(i, source))
            if len(chunk) == chunk_size:
                yield from self._run_chunk(chunk, sample_rate, hotwords, on_result)
                chunk = []
        if chunk:
            yield from self._run_chunk(chunk, sample_rate, hotwords, on_result)

    # ------------------------------------------------------------------ internals
    def _run_chunk(self, items: list[_Item], sample_rate, hotwords, on_result) -> Iterator[TranscriptionResult]:
        for item in items:
            self._measure(item, sample_rate)
        results: dict[int, TranscriptionResult] = {}
        ok = [it for it in items if it.error is None]
        batches = [[ok[i] for i in b] for b in self.engine.plan_batches([it.samples for it in ok])]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="w2v-load") as loader, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="w2v-decode",
                                   initializer=_lower_thread_priority) as decoder:
            # Load (decode, resample) the next batch while the model runs on this one; decode
            # each batch on a thread of low priority while the model runs on the next (the
            # runtimes release the GIL while they run), unless decode workers do it.
            future = loader.submit(self._load_batch, batches[0], sample_rate) if batches else None
            decoding = []
            for b, batch in enumerate(batches):
                loaded = future.result()
                future = loader.submit(self._load_batch, batches[b + 1], sample_rate) if b + 1 < len(batches) else None
                done = self._run_batch(loaded, hotwords, decoder if self._decode_pool is None else None)
                decoding.append((batch, done))
            for batch, done in decoding:
                for item, result in zip(batch, done()):
                    results[item.index] = result
        for item in items:
            if item.index not in results and item.error is None:     # long: windows, streamed
                results[item.index] = self._run_long(item, sample_rate, hotwords)
            if item.error is not None:
                results[item.index] = TranscriptionResult(item.path, error=item.error)
            if on_result is not None:
                on_result(results[item.index])
            yield results.pop(item.index)

    def _measure(self, item: _Item, sample_rate: Optional[int]) -> None:
        """Length at the model's rate, from the header (files) or the array; errors recorded."""
        try:
            if isinstance(item.source, np.ndarray):
                item.audio = validate_array(item.source, "array")
                rate = sample_rate or self.sample_rate
                if rate != self.sample_rate:
                    item.audio = resample(item.audio, rate, self.sample_rate)
                item.samples = len(item.audio)
            else:
                item.samples = file_samples(item.source, self.sample_rate)
        except Exception as e:     # one unreadable input must not stop the others
            item.error = _error_text(item, e)

    def _load_batch(self, batch: list[_Item], sample_rate) -> list[_Item]:
        for item in batch:
            if item.audio is None:
                try:
                    item.audio = load_audio(item.source, self.sample_rate)
                except Exception as e:
                    item.error = _error_text(item, e)
        return batch

    def _run_batch(self, batch: list[_Item], hotwords, decode_thread: Optional[ThreadPoolExecutor] = None
                   ) -> Callable[[], list[TranscriptionResult]]:
        """Run the model on a batch and start its decodes (on ``decode_thread`` or the decode
        workers, if given); returns what waits for the batch's results."""
        good = [it for it in batch if it.error is None and len(it.audio) >= self.engine.receptive_field]
        try:
            log_probs = dict(zip((it.index for it in good), self.engine.infer([it.audio for it in good])))
        except Exception as e:      # the whole run failed: every row of it gets the reason
            log_probs = {}
            for it in good:
                it.error = inference_error(it.path, e)
        durations = {it.index: len(it.audio) / self.sample_rate for it in batch if it.error is None}
        for it in batch:
            it.audio = None          # done with the samples

        def decode_all() -> dict:
            decoded = {}
            for it in batch:         # on the worker processes, if any, all at once
                lp = log_probs.get(it.index)
                if it.error is None and lp is not None:
                    try:
                        decoded[it.index] = self._decode(lp, 0, hotwords)
                    except Exception as e:      # raised for this input alone, below
                        decoded[it.index] = e
            return decoded

        pending = decode_thread.submit(decode_all) if decode_thread is not None else None
        decoded_here = decode_all() if pending is None else None

        def results() -> list[TranscriptionResult]:
            decoded = pending.result() if pending is not None else decoded_here
            out = []
            for it in batch:
                if it.error is not None:
                    out.append(TranscriptionResult(it.path, error=it.error))
                    continue
                try:
                    if isinstance(decoded.get(it.index), Exception):
                        raise decoded[it.index]
                    transcript = self._finish(decoded[it.index]) if it.index in decoded else Transcript("")
                except Exception as e:   # this input's decode failed (NaN log-probs, ...): it alone
                    out.append(TranscriptionResult(it.path, error=_error_text(it, e)))
                    continue
                out.append(TranscriptionResult(it.path, transcript.text, transcript.words, durations[it.index]))
            return out

        return results

    def _decode(self, log_probs: np.ndarray, frame_offset: int, hotwords) -> "_Pending | Transcript":
        """One decode: sent to the worker processes (``_Pending``) or done here (a Transcript)."""
        if self._decode_pool is not None:
            future = self._decode_pool.submit(log_probs, frame_offset, hotwords)
            if future is not None:
                return _Pending(future, (log_probs, frame_offset, hotwords))
            self._decode_pool = None            # the pool broke: decode here from now on
        return self.decoder.decode(log_probs, frame_offset=frame_offset, hotwords=hotwords)

    def _finish(self, decoded: "_Pending | Transcript") -> Transcript:
        """A decode's transcript; one lost with a dead worker is decoded here instead."""
        if isinstance(decoded, Transcript):
            return decoded
        try:
            return decoded.future.result()
        except BrokenProcessPool:
            if self._decode_pool is not None:
                log.warning("a decode worker died: decoding in this process from now on")
                self._decode_pool = None
            log_probs, frame_offset, hotwords = decoded.args
            return self.decoder.decode(log_probs, frame_offset=frame_offset, hotwords=hotwords)

    def _run_long(self, item: _Item, sample_rate, hotwords) -> TranscriptionResult:
        samples = 0

        def blocks() -> Iterator[np.ndarray]:
            nonlocal samples
            if item.audio is not None:
                step = int(_STREAM_BLOCK_S * self.sample_rate)
                source: Iterable[np.ndarray] = (item.audio[k:k + step] for k in range(0, len(item.audio), step))
            else:
                source = stream_audio(item.source, self.sample_rate, block_frames=1 << 18)
            for block in source:
                samples += len(block)
                yield block

        try:
            transcript = self._decode_behind(self.engine.stream_log_probs(blocks()), hotwords)
        except Exception as e:
            return TranscriptionResult(item.path, error=_error_text(item, e))
        finally:
            item.audio = None
        return TranscriptionResult(item.path, transcript.text, transcript.words, samples / self.sample_rate)

    def _decode_behind(self, chunks: Iterator[tuple[int, np.ndarray]], hotwords) -> Transcript:
        """``decode_stream`` on a background thread of low CPU priority while this thread runs the
        model: the decoder takes the cores when the model's threads leave them idle (between and
        inside runs) and otherwise waits, so it neither slows the model's runs (whose threads wait
        for each other) nor is left for the end. At most ``DECODE_QUEUE`` chunks wait for it."""
        pending: "queue.Queue" = queue.Queue(maxsize=DECODE_QUEUE)
        failed, ended = threading.Event(), threading.Event()
        out: dict = {}

        def received() -> Iterator[tuple[int, np.ndarray]]:
            while (chunk := pending.get()) is not None:
                yield chunk
            ended.set()

        def decode() -> None:
            _lower_thread_priority()
            try:
                out["transcript"] = self.decode_stream(received(), hotwords=hotwords)
            except BaseException as e:      # raised in the caller
                out["error"] = e
                failed.set()
                # Unblock the producer, up to the end marker unless the decoder already took it
                # (a failure in the last segment's decode comes after the end).
                while not ended.is_set() and pending.get() is not None:
                    pass

        worker = threading.Thread(target=decode, name="w2v-decode", daemon=True)
        worker.start()
        try:
            for chunk in chunks:
                if failed.is_set():
                    break
                pending.put(chunk)
        finally:
            pending.put(None)
            worker.join()
        if "error" in out:
            raise out["error"]
        return out["transcript"]

    def decode_stream(self, chunks: Iterable[tuple[int, np.ndarray]], *,
                      hotwords: Optional[Sequence[str]] = None) -> Transcript:
        """Decode stitched log-prob chunks of one long recording in segments cut at word boundaries."""
        parts: list[Transcript] = []
        # Segments out on the worker processes, in order: at most two per worker wait (memory).
        in_flight: collections.deque = collections.deque()
        limit = 2 * self._decode_pool.workers if self._decode_pool is not None else 0
        for frames, frame_offset in segments(chunks, self.vocab, self.engine.frame_seconds):
            in_flight.append(self._decode(frames, frame_offset, hotwords))
            while in_flight and (len(in_flight) > limit or isinstance(in_flight[0], Transcript)):
                parts.append(self._finish(in_flight.popleft()))
        parts.extend(self._finish(d) for d in in_flight)
        return Transcript.join(parts)


# Decode workers pay when the search, not the model, holds the job back: the model runs off the
# CPU (a GPU) and there is enough audio to amortize forking and shipping log-probabilities. On
# CPU runtimes the model's threads use every core and the search (~0.003 CPU-s per audio second
# with the bundled model and its LM, bench decoding) runs on a low-priority thread beside them.
AUTO_WORKERS_MIN_AUDIO_S = 120.0        # per worker
MAX_AUTO_DECODE_WORKERS = 8


def auto_decode_workers(decoder: DecoderOptions, audio_seconds: float, cores: Optional[int] = None,
                        model_on_gpu: Optional[bool] = None) -> int:
    """How many decode worker processes a job gets when the user does not say: none for greedy,
    none while the model runs on the CPU, else one per ``AUTO_WORKERS_MIN_AUDIO_S`` of audio, at
    most one per core but one and ``MAX_AUTO_DECODE_WORKERS``."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    if model_on_gpu is None:
        from w2v_serve.sessions import gpu_providers_present

        model_on_gpu = gpu_providers_present()
    if decoder.method != "beam" or not model_on_gpu or cores < 2:
        return 0
    return max(0, min(cores - 1, MAX_AUTO_DECODE_WORKERS, int(audio_seconds // AUTO_WORKERS_MIN_AUDIO_S)))


def audio_seconds(paths: Sequence[str], enough: float = float("inf")) -> float:
    """Total duration of the readable files among ``paths`` from their headers; stops adding
    once past ``enough``."""
    total = 0.0
    for path in paths:
        try:
            info = probe(path)
            total += info.frames / info.sample_rate
        except Exception:
            continue
        if total > enough:
            break
    return total


def segments(chunks: Iterable[tuple[int, np.ndarray]], vocab, frame_seconds: float) -> Iterator[tuple[np.ndarray, int]]:
    """A long recording's stitched log-prob chunks regrouped into ``(frames, first_frame)`` segments
    of SEGMENT_MIN_S..SEGMENT_MAX_S, each cut where no word is (``safe_cut_frame``)."""
    min_frames = int(SEGMENT_MIN_S / frame_seconds)
    max_frames = int(SEGMENT_MAX_S / frame_seconds)
    pending: list[np.ndarray] = []
    held = 0
    offset = 0                 # recording frame of the held frames' first row
    for _, chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        while held >= max_frames:
            frames = np.concatenate(pending)
            cut = safe_cut_frame(frames, vocab, min_frames, max_frames) or max_frames
            yield frames[:cut], offset
            pending, held, offset = [frames[cut:]], len(frames) - cut, offset + cut
    if held:
        yield np.concatenate(pending), offset


def file_samples(path: Union[str, Path], sample_rate: int) -> int:
    """A file's length at ``sample_rate``, from its header; AudioError when unreadable or empty."""
    info = probe(path)
    if info.frames == 0:
        raise AudioError(f"{path}: contains no samples")
    return int(round(info.frames * sample_rate / info.sample_rate))


class DecodePool:
    """Decoding on worker processes. pyctcdecode's beam search is a pure-Python loop: threads share
    one core through the GIL, so on a long recording the decode left after the model's last window
    ran on one core while the other idled. The workers are forked when the pool is made (callers
    make it before the runtime starts its threads: a fork copies only the forking thread), each
    loads its own decoder (the LM) and runs at lowered priority, so while the model runs they take
    only the cycles its threads leave. A worker ends itself when this process is gone (killed
    included)."""

    def __init__(self, vocab, options: DecoderOptions, frame_seconds: float, workers: int) -> None:
        self.workers = workers
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self._pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_decode_worker,
                                         initargs=(vocab, options, frame_seconds, os.getpid()))
        self._pool.submit(int)          # forks every worker now (not at the first decode)

    def submit(self, log_probs: np.ndarray, frame_offset: int, hotwords) -> Optional[Future]:
        """The decode's Future; None when the pool is broken (a worker died)."""
        try:
            return self._pool.submit(_decode_in_worker, log_probs, frame_offset,
                                     tuple(hotwords) if hotwords is not None else None)
        except (BrokenProcessPool, RuntimeError) as e:
            log.warning("decode workers unavailable (%s): decoding in this process", e)
            return None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


_WORKER_DECODER: Optional[CTCDecoder] = None


def _start_decode_worker(vocab, options: DecoderOptions, frame_seconds: float, parent_pid: int) -> None:
    global _WORKER_DECODER
    exit_with_parent(parent_pid)     # a killed `w2v transcribe` leaves no workers behind
    try:
        os.nice(10)
    except OSError:
        pass
    try:
        _WORKER_DECODER = CTCDecoder(vocab, options, frame_seconds=frame_seconds)
    except Exception as e:   # the parent loads the same decoder and reports this in one line
        global _WORKER_ERROR
        _WORKER_ERROR = e


_WORKER_ERROR: Optional[Exception] = None


def _decode_in_worker(log_probs: np.ndarray, frame_offset: int, hotwords) -> Transcript:
    if _WORKER_DECODER is None:
        raise _WORKER_ERROR or RuntimeError("the decode worker has no decoder")
    return _WORKER_DECODER.decode(log_probs, frame_offset=frame_offset, hotwords=hotwords)


@dataclass(frozen=True)
class _Pending:
    """A decode out on a worker, with what it needs to be redone here if the worker dies."""

    future: Future
    args: tuple                 # (log_probs, frame_offset, hotwords)


def _bundled_model():
    model = default_model_dir()
    if model is None:
        raise ModelDirError("this installation has no bundled default model yet; "
                            "pass a model directory (written by `w2v export CKPT --out DIR`)")
    return model


def _lower_thread_priority(step: int = 10) -> None:
    """Lower the calling thread's scheduling priority (Linux: a thread is its own scheduling
    entity); elsewhere, or when not allowed, nothing."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except (AttributeError, OSError):
        pass


def _error_text(item: _Item, error: Exception) -> str:
    return error_text(item.path, error)


def error_text(path: Optional[str], error: Exception) -> str:
    """An input's error message: AudioError messages already name the file and the reason;
    anything else gets both added."""
    if isinstance(error, AudioError):
        return str(error)
    return f"{path or 'array'}: {type(error).__name__}: {error}"


def inference_error(path: Optional[str], error: Exception) -> str:
    """The error of every input of a model run that failed."""
    return f"{path or 'array'}: inference failed ({error})"
