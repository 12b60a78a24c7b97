"""What one client may take from the server: the limits every protocol front-end shares.

The gRPC servicer, the Riva adapter and the HTTP front-end all move a stream's audio through an
``AudioFeed`` and keep its clocks in a ``StreamGuard``, so the same checks hold whatever the
protocol:

* the audio format: a known encoding, 1..32 channels, a sample rate in 8,000..192,000 Hz
  (``pcm.AudioFormat``);
* per message: at most ``max_chunk_bytes``;
* per stream, *before* any work on a message: its audio (the message's duration at the client's
  own rate, before resampling) keeps the stream within ``max_stream_seconds``;
* per stream: the server's compute time spent on it (the inference worker's time on its audio,
  a batched run shared by several streams split by their audio, plus the decoding and
  resampling of its messages) stays within ``max_stream_cpu_s``; the embedded backend stops a
  long message's work in the middle when the budget runs out;
* the idle clock counts only the client's silence: it runs while the server waits for a message
  and nothing is queued, never while the server itself is busy with the stream's audio;
* audio must keep coming at ``min_audio_rate`` seconds per second of the client's time (after a
  grace of ``idle_timeout_s``): a client that trickles a few bytes now and then to hold a stream
  open is ended.

Each refusal is a ``ServiceError`` whose code says which limit: INVALID_ARGUMENT (a message too
big, a bad format), OUT_OF_RANGE (too much audio), RESOURCE_EXHAUSTED (compute budget),
DEADLINE_EXCEEDED (idle, or audio too slow).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Callable

import grpc
import numpy as np

from w2v_serve.service.errors import ServiceError, compute_exhausted, invalid_argument
from w2v_serve.service.pcm import AudioFormat, ChunkDecoder
from w2v_serve.streaming import StreamResult


@dataclass(frozen=True)
class ServiceLimits:
    max_streams: int = 64                 # concurrent streams (RESOURCE_EXHAUSTED beyond)
    max_chunk_bytes: int = 1 << 20        # one audio message (INVALID_ARGUMENT beyond)
    max_stream_seconds: float = 3600.0    # audio per stream or Recognize call (OUT_OF_RANGE beyond)
    max_stream_cpu_s: float = 1800.0      # server compute time per stream (RESOURCE_EXHAUSTED beyond)
    idle_timeout_s: float = 30.0          # the client silent this long (DEADLINE_EXCEEDED)
    min_audio_rate: float = 0.1           # audio seconds per second of the client's time; 0: no check

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "min_audio_rate":
                if not 0 <= value < math.inf:
                    raise ValueError("min_audio_rate must be 0 or more")
            elif not value > 0:
                raise ValueError(f"{f.name} must be positive, got {value}")

    @property
    def max_message_bytes(self) -> int:
        """gRPC's own cap on a request: room for a chunk, and for Recognize's whole audio up to
        ten minutes of 16 kHz float32 (longer files belong on a stream)."""
        return max(self.max_chunk_bytes + 4096, 10 * 60 * 16000 * 4 + 4096)


def check_recording(fmt: AudioFormat, n_bytes: int, limits: ServiceLimits) -> float:
    """A whole recording (unary Recognize, an HTTP upload): its seconds, or OUT_OF_RANGE before
    any work when it is over ``max_stream_seconds``."""
    seconds = fmt.seconds(n_bytes)
    if seconds > limits.max_stream_seconds:
        raise ServiceError(grpc.StatusCode.OUT_OF_RANGE,
                           f"audio of {seconds:.1f} s is over the limit of {limits.max_stream_seconds:g} s")
    return seconds


class StreamGuard:
    """One stream's budgets and clocks (audio seconds, compute seconds, the client's time)."""

    def __init__(self, limits: ServiceLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.audio_s = 0.0          # audio admitted, at the client's rate
        self.compute_s = 0.0        # server compute spent on the stream
        self.client_s = 0.0         # time the server spent waiting for the client
        self._waiting_since: float | None = None

    # -------------------------------------------------------------- the client's clock
    def begin_wait(self) -> None:
        """The server is ready for the next message and none is queued: the client's time runs."""
        if self._waiting_since is None:
            self._waiting_since = self.clock()

    def end_wait(self) -> None:
        """A message arrived (or the wait ended otherwise): the client's time stops."""
        if self._waiting_since is not None:
            self.client_s += self.clock() - self._waiting_since
            self._waiting_since = None

    def idle_left(self) -> float:
        """Seconds of silence the client has left (the full timeout while the server is busy)."""
        if self._waiting_since is None:
            return self.limits.idle_timeout_s
        return self.limits.idle_timeout_s - (self.clock() - self._waiting_since)

    def check_waiting(self) -> None:
        """DEADLINE_EXCEEDED when the client has been silent too long or sends audio too slowly."""
        if self.idle_left() <= 0:
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"no request for {self.limits.idle_timeout_s:g} s (idle timeout)")
        self._check_pace()

    def _check_pace(self) -> None:
        rate = self.limits.min_audio_rate
        waited = self.client_s + (0.0 if self._waiting_since is None else self.clock() - self._waiting_since)
        if rate and waited >= self.limits.idle_timeout_s and self.audio_s < rate * waited:
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"audio arrives too slowly: {self.audio_s:.2f} s of audio in {waited:.1f} s "
                               f"(the minimum is {rate:g} s of audio per second)")

    # -------------------------------------------------------------- budgets
    def admit(self, fmt: AudioFormat, n_bytes: int) -> float:
        """Check one audio message before any work on it; returns its seconds (at its own rate)."""
        if n_bytes > self.limits.max_chunk_bytes:
            raise invalid_argument(f"audio chunk of {n_bytes} bytes is over the limit of "
                                   f"{self.limits.max_chunk_bytes} bytes")
        seconds = fmt.seconds(n_bytes)
        if self.audio_s + seconds > self.limits.max_stream_seconds:
            raise ServiceError(grpc.StatusCode.OUT_OF_RANGE,
                               f"stream is over the limit of {self.limits.max_stream_seconds:g} s of audio")
        self.audio_s += seconds
        self._check_pace()
        return seconds

    @property
    def compute_left(self) -> float:
        return max(0.0, self.limits.max_stream_cpu_s - self.compute_s)

    def charge(self, seconds: float) -> None:
        """Add compute time spent on the stream; RESOURCE_EXHAUSTED once it is over the budget."""
        self.compute_s += max(0.0, seconds)
        if self.compute_s > self.limits.max_stream_cpu_s:
            raise compute_exhausted(self.limits.max_stream_cpu_s)


class AudioFeed:
    """A stream's audio from encoded bytes to the backend, with every check before the work:
    ``feed(bytes)`` per message, ``finish()`` at the end of the audio."""

    def __init__(self, stream, fmt: AudioFormat, target_rate: int, guard: StreamGuard) -> None:
        self.stream, self.format, self.guard = stream, fmt, guard
        self.decoder = ChunkDecoder(fmt, target_rate)

    async def feed(self, data: bytes) -> list[StreamResult]:
        self.guard.admit(self.format, len(data))
        started = time.thread_time()
        audio = self.decoder.decode(data)
        self.guard.charge(time.thread_time() - started)
        return await self._send(audio, end=False)

    async def finish(self) -> list[StreamResult]:
        return await self._send(self.decoder.finish(), end=True)

    async def _send(self, audio: np.ndarray, end: bool) -> list[StreamResult]:
        before = getattr(self.stream, "compute_s", 0.0)
        try:
            return await self.stream.send(audio, end=end, budget_s=self.guard.compute_left)
        finally:
            self.guard.charge(getattr(self.stream, "compute_s", 0.0) - before)
