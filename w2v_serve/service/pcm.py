"""Audio bytes of a gRPC stream -> 16 kHz float32 mono, chunk by chunk.

One ``ChunkDecoder`` per stream: it checks each chunk against the stream's declared encoding
(LINEAR16: whole 16-bit samples; FLOAT32: whole 4-byte samples, finite), averages interleaved
channels, and resamples to the model's rate with soxr's *streaming* resampler, whose filter state
carries across chunks (resampling chunks one by one would click at every boundary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import soxr

from w2v_serve.audio import MAX_PEAK, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SAMPLE_RATE, sample_rate_problem  # noqa: F401 (re-exported)

LINEAR16 = "LINEAR16"
FLOAT32 = "FLOAT32"
ENCODINGS = {LINEAR16: np.dtype("<i2"), FLOAT32: np.dtype("<f4")}
MAX_CHANNELS = 32


class ChunkError(ValueError):
    """A config or chunk that does not fit the declared format (INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class AudioFormat:
    encoding: str
    sample_rate: int
    channels: int = 1

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ChunkError(f"unknown audio encoding {self.encoding!r}; use LINEAR16 or FLOAT32")
        problem = sample_rate_problem(self.sample_rate)
        if problem:
            raise ChunkError(f"sample_rate_hz: {problem}")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ChunkError(f"audio_channel_count must be in 1..{MAX_CHANNELS}, got {self.channels}")

    @property
    def frame_bytes(self) -> int:
        return ENCODINGS[self.encoding].itemsize * self.channels

    def seconds(self, n_bytes: int) -> float:
        """Duration of ``n_bytes`` of this format at its own rate (before any resampling)."""
        return n_bytes / self.frame_bytes / self.sample_rate


class ChunkDecoder:
    """Stateful: feed chunks in order, then ``finish()`` for the resampler's tail."""

    def __init__(self, fmt: AudioFormat, target_rate: int = SAMPLE_RATE) -> None:
        self.format = fmt
        self._resampler: Optional[soxr.ResampleStream] = None
        if fmt.sample_rate != target_rate:
            self._resampler = soxr.ResampleStream(fmt.sample_rate, target_rate, 1, dtype="float32", quality="VHQ")

    def decode(self, data: bytes) -> np.ndarray:
        fmt = self.format
        if len(data) % fmt.frame_bytes:
            raise ChunkError(f"{fmt.encoding} chunk of {len(data)} bytes is not a whole number of "
                             f"{fmt.frame_bytes}-byte frames ({fmt.channels} channel(s))")
        samples = np.frombuffer(data, dtype=ENCODINGS[fmt.encoding])
        if fmt.encoding == LINEAR16:
            audio = samples.astype(np.float32) / 32768.0
        else:
            audio = samples.astype(np.float32)
            if not np.isfinite(audio).all():
                raise ChunkError("FLOAT32 chunk contains non-finite samples (NaN or Inf)")
            if audio.size and float(np.abs(audio).max()) > MAX_PEAK:
                raise ChunkError(f"FLOAT32 chunk has samples beyond {MAX_PEAK:g} times full scale "
                                 "(audio is in [-1, 1])")
        if fmt.channels > 1:
            audio = audio.reshape(-1, fmt.channels).mean(axis=1, dtype=np.float32)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio, last=False)
        return np.ascontiguousarray(audio, dtype=np.float32)

    def finish(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return np.ascontiguousarray(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True), dtype=np.float32)
