"""The one thread that runs a StreamingRecognizer for the service.

ONNX Runtime sessions already use every core for one run, and the recognizer's per-stream state
must not be touched by two threads at once, so all streams' chunks go through one queue to one
thread.

Fair scheduling: the thread works in rounds. Each stream with audio waiting gets one *slice* of
its oldest chunk per round (at most ``slice_samples``; by default the recognizer's own chunk, so
one window per stream per round), and the round's slices of streams with the
same recognizer, hotwords and partials setting share one ``accept_many`` (one batched
Transformer run), which is how throughput grows with the number of streams. A stream that sends
a minute of audio in one message therefore takes one slice per round like every other stream:
the others' small chunks are answered between its slices instead of after all of it.

Each chunk's compute time (its share of the rounds' wall time, a shared run split by the slices'
samples) is measured, and a chunk given a budget stops between slices once it is spent
(``ComputeBudgetExceeded``; the stream is closed).

Closing a stream is a queued command too, applied by this thread between runs, so a close never
races a run that is using the stream's state; the stream's work still queued then (its client
left) is dropped.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import OrderedDict, defaultdict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from w2v_serve.streaming import StreamingRecognizer, StreamResult

log = logging.getLogger("w2v.serve")


class ComputeBudgetExceeded(RuntimeError):
    """A chunk's work stopped because its stream spent its compute budget."""


@dataclass
class _Chunk:
    recognizer: StreamingRecognizer
    stream_id: object
    audio: np.ndarray
    end: bool
    hotwords: Optional[tuple[str, ...]]
    partials: bool
    budget_s: float = math.inf
    future: Future = field(default_factory=Future)
    offset: int = 0                       # samples already run
    started: bool = False
    compute_s: float = 0.0                # this chunk's share of the rounds' time
    results: list = field(default_factory=list)

    def next_slice(self, size: int) -> tuple[np.ndarray, bool]:
        piece = self.audio[self.offset:self.offset + size]
        return piece, self.end and self.offset + len(piece) >= len(self.audio)


@dataclass
class _Close:
    recognizer: StreamingRecognizer
    stream_id: object


_STOP = object()


def merge_results(results: list[StreamResult], partials: bool) -> list[StreamResult]:
    """One chunk's results over its slices, as one ``accept`` of the whole chunk gives them: the
    finals, and the last partial when it came after them."""
    if partials and results and not results[-1].is_final:
        return [r for r in results if r.is_final] + [results[-1]]
    return results


class InferenceWorker:
    def __init__(self, name: str = "w2v-inference", slice_samples: Optional[int] = None) -> None:
        self.slice_samples = slice_samples
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # Per stream, in arrival order of their first waiting item: chunks and closes.
        self._pending: "OrderedDict[tuple, deque]" = OrderedDict()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, recognizer: StreamingRecognizer, stream_id: object, audio: np.ndarray, *, end: bool,
               hotwords: Optional[Sequence[str]] = None, partials: bool = True,
               budget_s: float = math.inf) -> Future:
        """Queue a chunk; the future gives ``(results, compute_s)`` (or the StreamError, or
        ComputeBudgetExceeded once ``budget_s`` of compute is spent on it)."""
        chunk = _Chunk(recognizer, stream_id, np.asarray(audio, np.float32).reshape(-1), end,
                       tuple(hotwords) if hotwords else None, partials, budget_s)
        self._queue.put(chunk)
        return chunk.future

    def close(self, recognizer: StreamingRecognizer, stream_id: object) -> None:
        self._queue.put(_Close(recognizer, stream_id))

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    @property
    def waiting_streams(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            # Block only when there is no work; otherwise take what arrived and do one round.
            items = [] if self._pending else [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = False
            for item in items:
                if item is _STOP:
                    stop = True
                    continue
                key = (id(item.recognizer), item.stream_id)
                self._pending.setdefault(key, deque()).append(item)
                if isinstance(item, _Close):
                    # Only a stream whose client left is closed with work queued: drop that work.
                    self._fail_stream(key, RuntimeError("the stream was closed"))
            if stop:
                self._fail_all(RuntimeError("the inference worker stopped"))
                return
            try:
                self._round()
            except Exception:       # a bug: keep serving the other streams
                log.exception("inference round failed")

    def _round(self) -> None:
        """One slice of every waiting stream's oldest chunk; closes at the head are applied."""
        groups: dict[tuple, list[tuple[_Chunk, np.ndarray, bool]]] = defaultdict(list)
        for key in list(self._pending):
            items = self._pending[key]
            while items:
                head = items[0]
                if isinstance(head, _Close):
                    head.recognizer.close(head.stream_id)
                    items.popleft()
                    continue
                if not head.started:
                    head.started = True
                    # A chunk whose future was cancelled belongs to a client that left: skip its work.
                    if not head.future.set_running_or_notify_cancel():
                        items.popleft()
                        continue
                piece, last = head.next_slice(self._slice(head.recognizer))
                # Partials only for a chunk's last slice: the earlier ones' would be dropped anyway.
                partials = head.partials and head.offset + len(piece) >= len(head.audio)
                groups[(id(head.recognizer), head.hotwords, partials)].append((head, piece, last))
                break
            if not items:
                del self._pending[key]
        for key, group in groups.items():
            self._accept(key, group)

    def _slice(self, rec: StreamingRecognizer) -> int:
        if self.slice_samples:
            return max(1, self.slice_samples)
        return max(1, rec.config.chunk_frames * rec.stride)

    def _accept(self, key: tuple, group: list[tuple[_Chunk, np.ndarray, bool]]) -> None:
        head, partials = group[0][0], key[2]
        started = time.perf_counter()
        results = head.recognizer.accept_each([(c.stream_id, piece, last) for c, piece, last in group],
                                              hotwords=head.hotwords, partials=partials)
        elapsed = time.perf_counter() - started
        total = sum(len(piece) + 1 for _, piece, _ in group)
        for (c, piece, last), res in zip(group, results):
            c.compute_s += elapsed * (len(piece) + 1) / total
            key = (id(c.recognizer), c.stream_id)
            if isinstance(res, Exception):
                self._fail_stream(key, res)
                continue
            c.results.extend(res)
            c.offset += len(piece)
            if c.offset >= len(c.audio) and (last or not c.end):
                self._pending[key].popleft()
                c.future.set_result((merge_results(c.results, c.partials), c.compute_s))
            elif c.compute_s > c.budget_s:
                c.recognizer.close(c.stream_id)
                self._fail_stream(key, ComputeBudgetExceeded(
                    f"stopped after {c.compute_s:.1f} s of compute, over the stream's budget"))

    def _fail_stream(self, key: tuple, error: Exception) -> None:
        """The stream's waiting chunks fail with ``error``; a queued close is still applied."""
        for item in self._pending.pop(key, ()):
            if isinstance(item, _Close):
                item.recognizer.close(item.stream_id)
            elif not item.future.done():
                if not item.started:
                    item.started = True
                    if not item.future.set_running_or_notify_cancel():
                        continue
                item.future.set_exception(error)

    def _fail_all(self, error: Exception) -> None:
        for key in list(self._pending):
            self._fail_stream(key, error)
