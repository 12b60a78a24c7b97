"""What the service asks of a backend (embedded ONNX Runtime, or Triton servers).

A backend opens streams and answers whole-recording requests. Audio is always 16 kHz float32 mono
by then. Results are the runtime's own types: ``StreamResult`` per partial or final of a stream,
``TranscriptionResult`` for a recording. Failures are ``ServiceError``s carrying the gRPC status
for the client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from w2v_serve.streaming import StreamResult
from w2v_serve.transcribe import TranscriptionResult


@dataclass(frozen=True)
class StreamOptions:
    interim_results: bool = True
    hotwords: tuple[str, ...] = ()
    method: Optional[str] = None     # "greedy" | "beam" | None (the server's default)
    beam_width: int = 0              # 0: the server's default
    alpha: Optional[float] = None    # LM weight (None: the server's)
    beta: Optional[float] = None     # word insertion bonus (None: the server's)
    endpoint_ms: Optional[int] = None  # pause that ends a segment (None: the server's)
    alternatives: int = 1            # Recognize: hypotheses wanted (backends with recognize_nbest)


class BackendStream(Protocol):
    description: str                 # where the stream runs ("embedded", "triton HOST:PORT")
    compute_s: float                 # server compute time spent on the stream so far

    async def send(self, audio: np.ndarray, *, end: bool, budget_s: float = math.inf) -> list[StreamResult]:
        """Audio of the stream, in order; the partial and final results it produced. A backend
        may stop the work once ``budget_s`` more compute was spent (RESOURCE_EXHAUSTED)."""

    def close(self) -> None:
        """Free the stream's state. Must not block: it runs in the event loop, also while a call
        is being cancelled."""


class Backend(Protocol):
    name: str
    sample_rate: int

    async def open_stream(self, options: StreamOptions) -> BackendStream: ...

    async def recognize(self, audio: np.ndarray, options: StreamOptions) -> TranscriptionResult: ...

    # Optional: a backend that can return several hypotheses also has
    # async def recognize_nbest(audio, options) -> tuple[TranscriptionResult, list[Transcript]]
    # (the result as ``recognize`` gives it, and up to ``options.alternatives`` hypotheses, the
    # result's own first).

    @property
    def active_streams(self) -> int: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...
