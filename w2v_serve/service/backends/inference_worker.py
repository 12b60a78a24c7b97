"""The one thread that runs a StreamingRecognizer for the service.

ONNX Runtime sessions already use every core for one run, and the recognizer's per-stream state
must not be touched by two threads at once, so all streams' chunks go through one queue to one
thread. Whatever has queued up while a run was going is taken together: chunks of different
streams with the same recognizer, hotwords and partials setting share one ``accept_many`` (one
batched Transformer run), which is how throughput grows with the number of streams.

Closing a stream is a queued command too, applied after the chunks already queued, so a close
never races a run that is using the stream's state.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from w2v_serve.streaming import StreamingRecognizer

log = logging.getLogger("w2v.serve")


@dataclass
class _Chunk:
    recognizer: StreamingRecognizer
    stream_id: object
    audio: np.ndarray
    end: bool
    hotwords: Optional[tuple[str, ...]]
    partials: bool
    future: Future = field(default_factory=Future)


@dataclass
class _Close:
    recognizer: StreamingRecognizer
    stream_id: object


_STOP = object()


class InferenceWorker:
    def __init__(self, name: str = "w2v-inference") -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, recognizer: StreamingRecognizer, stream_id: object, audio: np.ndarray, *, end: bool,
               hotwords: Optional[Sequence[str]] = None, partials: bool = True) -> Future:
        """Queue a chunk; the future gives its list of StreamResult (or the StreamError)."""
        chunk = _Chunk(recognizer, stream_id, audio, end, tuple(hotwords) if hotwords else None, partials)
        self._queue.put(chunk)
        return chunk.future

    def close(self, recognizer: StreamingRecognizer, stream_id: object) -> None:
        self._queue.put(_Close(recognizer, stream_id))

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(i is _STOP for i in items)
            chunks = [i for i in items if isinstance(i, _Chunk)]
            # A chunk whose future was cancelled belongs to a client that left: skip its work.
            chunks = [c for c in chunks if c.future.set_running_or_notify_cancel()]
            groups: dict[tuple, list[_Chunk]] = defaultdict(list)
            for c in chunks:
                groups[(id(c.recognizer), c.hotwords, c.partials)].append(c)
            for group in groups.values():
                self._accept(group)
            for item in items:
                if isinstance(item, _Close):
                    item.recognizer.close(item.stream_id)
            if stop:
                return

    @staticmethod
    def _accept(group: list[_Chunk]) -> None:
        rec, hotwords, partials = group[0].recognizer, group[0].hotwords, group[0].partials
        results = rec.accept_each([(c.stream_id, c.audio, c.end) for c in group], hotwords=hotwords, partials=partials)
        for c, res in zip(group, results):
            if isinstance(res, Exception):
                c.future.set_exception(res)
            else:
                c.future.set_result(res)
