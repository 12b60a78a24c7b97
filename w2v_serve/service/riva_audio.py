"""Audio as Riva clients send it -> the w2v.v1 service's chunks (LINEAR16 or FLOAT32 frames).

Riva's ``RecognitionConfig.encoding``: LINEAR_PCM (16-bit little-endian), MULAW and ALAW (G.711,
8 bits a sample), FLAC and OGGOPUS (containers). NVIDIA's scripts send a WAV file whole, header
in the first chunk and no encoding, rate or channel count set; the header is read here (as Riva
does) and says the rest: PCM of 8/16/24/32 bits, 32-bit float, A-law or mu-law, its rate and
channels. Bytes after the WAV ``data`` chunk (trailing LIST chunks) are not audio and are
dropped. FLAC and Ogg (Opus or Vorbis, also sniffed from their magic bytes) are decoded with
libsndfile when their stream ends: partial results of such a stream come only then.

The output keeps the source's rate and channels: the service's ``ChunkDecoder`` averages channels
and resamples, so a file reaches the model exactly as ``w2v transcribe`` reads it (8- and 16-bit
PCM and G.711 as LINEAR16, wider PCM and float as FLOAT32, the same values libsndfile gives).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

from w2v_serve.audio import sample_rate_problem
from w2v_serve.service.pcm import MAX_CHANNELS, ChunkError

# Riva's nvidia.riva.AudioEncoding numbers (riva_audio.proto).
ENCODING_UNSPECIFIED, LINEAR_PCM, FLAC, MULAW, OGGOPUS, ALAW = 0, 1, 2, 3, 4, 20
ENCODING_NAMES = {ENCODING_UNSPECIFIED: "ENCODING_UNSPECIFIED", LINEAR_PCM: "LINEAR_PCM", FLAC: "FLAC",
                  MULAW: "MULAW", OGGOPUS: "OGGOPUS", ALAW: "ALAW"}
MAX_HEADER_BYTES = 1 << 20          # a WAV header (fmt, LIST, ... chunks) larger than this is refused
MAX_CONTAINER_BYTES = 256 << 20     # a FLAC/Ogg stream is held whole until it ends

_WAVE_PCM, _WAVE_FLOAT, _WAVE_ALAW, _WAVE_MULAW, _WAVE_EXTENSIBLE = 1, 3, 6, 7, 0xFFFE


def _g711_tables() -> tuple[np.ndarray, np.ndarray]:
    """16-bit linear values of the 256 mu-law and A-law codes (ITU-T G.711)."""
    codes = np.arange(256, dtype=np.int32)
    u = ~codes & 0xFF
    exponent, mantissa = (u >> 4) & 7, u & 0x0F
    mag = (((mantissa << 3) + 0x84) << exponent) - 0x84
    mulaw = np.where(u & 0x80, -mag, mag)
    a = codes ^ 0x55
    exponent, mantissa = (a >> 4) & 7, a & 0x0F
    mag = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    alaw = np.where(a & 0x80, mag, -mag)
    return mulaw.astype(np.int16), alaw.astype(np.int16)


MULAW_TABLE, ALAW_TABLE = _g711_tables()


@dataclass(frozen=True)
class PcmLayout:
    """How the audio bytes are laid out once the container (if any) is known."""

    kind: str             # "int" (signed LE), "uint8", "float", "mulaw", "alaw"
    width: int            # bytes per sample
    sample_rate: int
    channels: int

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels

    @property
    def out_frame_bytes(self) -> int:
        return (2 if self.out_encoding == "LINEAR16" else 4) * self.channels

    @property
    def out_encoding(self) -> str:
        """The w2v.v1 encoding its samples are passed on in."""
        return "LINEAR16" if self.kind in ("uint8", "mulaw", "alaw") or (self.kind == "int" and self.width == 2) \
            else "FLOAT32"


def _check_rate_channels(rate: int, channels: int) -> None:
    problem = sample_rate_problem(rate)
    if problem:
        raise ChunkError(problem)
    if not 1 <= channels <= MAX_CHANNELS:
        raise ChunkError(f"audio_channel_count must be in 1..{MAX_CHANNELS}, got {channels}")


def parse_wav_header(data: bytes) -> Optional[tuple[PcmLayout, int, Optional[int]]]:
    """(layout, offset of the first audio byte, data size or None when unknown) of a RIFF/WAVE
    header at the start of ``data``; None while ``data`` does not yet reach the ``data`` chunk."""
    if len(data) < 12:
        return None
    if data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise ChunkError("audio starts with RIFF but is not a WAVE file")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, pos)
        body = pos + 8
        if chunk_id == b"data":
            if fmt is None:
                raise ChunkError("WAV file has its data chunk before its fmt chunk")
            return fmt, body, (None if size in (0, 0xFFFFFFFF) else size)
        if body + size > len(data):
            return None                       # the chunk continues in the next message
        if chunk_id == b"fmt ":
            fmt = _wav_format(data[body:body + size])
        pos = body + size + (size & 1)        # chunks are padded to even sizes
    return None


def _wav_format(fmt: bytes) -> PcmLayout:
    if len(fmt) < 16:
        raise ChunkError("WAV fmt chunk is too short")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", fmt, 0)
    if tag == _WAVE_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]      # the sub-format GUID's first two bytes
    _check_rate_channels(rate, channels)
    if tag == _WAVE_PCM and bits in (8, 16, 24, 32):
        return PcmLayout("uint8" if bits == 8 else "int", bits // 8, rate, channels)
    if tag == _WAVE_FLOAT and bits == 32:
        return PcmLayout("float", 4, rate, channels)
    if tag in (_WAVE_MULAW, _WAVE_ALAW) and bits == 8:
        return PcmLayout("mulaw" if tag == _WAVE_MULAW else "alaw", 1, rate, channels)
    raise ChunkError(f"WAV format tag {tag} with {bits}-bit samples is not supported "
                     "(PCM 8/16/24/32-bit, 32-bit float, A-law or mu-law)")


def to_output(samples: bytes, layout: PcmLayout) -> bytes:
    """Whole frames of ``layout`` -> the bytes of its ``out_encoding``."""
    if layout.kind == "int" and layout.width == 2:
        return samples
    if layout.kind == "uint8":
        return ((np.frombuffer(samples, np.uint8).astype(np.int16) - 128) << 8).astype("<i2").tobytes()
    if layout.kind in ("mulaw", "alaw"):
        table = MULAW_TABLE if layout.kind == "mulaw" else ALAW_TABLE
        return table[np.frombuffer(samples, np.uint8)].astype("<i2").tobytes()
    if layout.kind == "float":
        x = np.frombuffer(samples, "<f4")
        if not np.isfinite(x).all():
            raise ChunkError("float WAV data holds non-finite samples (NaN or Inf)")
        return samples
    if layout.width == 3:
        b = np.frombuffer(samples, np.uint8).reshape(-1, 3).astype(np.int32)
        x = (b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)          # 24-bit into the top of an int32
        return (x.astype(np.float64) / 2**31).astype("<f4").tobytes()
    return (np.frombuffer(samples, "<i4").astype(np.float64) / 2**31).astype("<f4").tobytes()


class RivaAudio:
    """One request's (or stream's) audio: ``feed`` bytes in order, then ``finish``. Each returns
    output bytes (whole frames of ``layout.out_encoding``); ``layout`` is known once a header or
    the config has said it (FLAC/Ogg: at ``finish``)."""

    def __init__(self, encoding: int, sample_rate: int, channels: int) -> None:
        if encoding not in ENCODING_NAMES:
            raise ChunkError(f"unknown audio encoding {encoding}; use LINEAR_PCM, FLAC, MULAW, ALAW or OGGOPUS")
        self.encoding, self.sample_rate, self.channels = encoding, sample_rate, channels or 1
        self.layout: Optional[PcmLayout] = None
        self._mode: Optional[str] = None          # "raw", "wav", "container"; None: not sniffed yet
        self._buffer = bytearray()                # header bytes, a partial frame, or a whole container
        self._data_left: Optional[int] = None     # WAV data bytes still expected (None: to the end)

    def _raw_layout(self) -> PcmLayout:
        if not self.sample_rate:
            raise ChunkError(f"sample_rate_hertz is required for {ENCODING_NAMES[self.encoding]} audio without "
                             "a WAV header")
        _check_rate_channels(self.sample_rate, self.channels)
        if self.encoding in (MULAW, ALAW):
            return PcmLayout("mulaw" if self.encoding == MULAW else "alaw", 1, self.sample_rate, self.channels)
        return PcmLayout("int", 2, self.sample_rate, self.channels)

    def _sniff(self) -> bool:
        head = bytes(self._buffer[:4])
        if len(head) < 4 and self.encoding in (ENCODING_UNSPECIFIED, LINEAR_PCM):
            return False
        if head in (b"RIFF", b"RF64") and self.encoding in (ENCODING_UNSPECIFIED, LINEAR_PCM, MULAW, ALAW):
            self._mode = "wav"
        elif self.encoding in (FLAC, OGGOPUS) or (self.encoding == ENCODING_UNSPECIFIED and head in (b"fLaC", b"OggS")):
            self._mode = "container"
        elif self.encoding == ENCODING_UNSPECIFIED and not self.sample_rate:
            raise ChunkError("encoding is unset and the audio has no WAV, FLAC or Ogg header: set encoding and "
                             "sample_rate_hertz (LINEAR_PCM is 16-bit little-endian)")
        else:
            self._mode, self.layout = "raw", self._raw_layout()
        return True

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        if self._mode is None and not self._sniff():
            return b""
        if self._mode == "container":
            if len(self._buffer) > MAX_CONTAINER_BYTES:
                raise ChunkError(f"a FLAC/Ogg stream is held whole until it ends; this one is over "
                                 f"{MAX_CONTAINER_BYTES >> 20} MiB")
            return b""
        if self._mode == "wav" and self.layout is None:
            parsed = parse_wav_header(bytes(self._buffer))
            if parsed is None:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise ChunkError(f"no WAV data chunk in the first {MAX_HEADER_BYTES >> 20} MiB")
                return b""
            self.layout, offset, self._data_left = parsed
            del self._buffer[:offset]
        return self._frames()

    def _frames(self) -> bytes:
        if self._data_left is not None and len(self._buffer) > self._data_left:
            del self._buffer[self._data_left:]     # after the data chunk (LIST, ...): not audio
        usable = len(self._buffer) - len(self._buffer) % self.layout.frame_bytes
        out = to_output(bytes(self._buffer[:usable]), self.layout)
        del self._buffer[:usable]
        if self._data_left is not None:
            self._data_left -= usable
        return out

    def finish(self) -> bytes:
        """The rest: a whole FLAC/Ogg stream decoded; an unfinished frame of PCM is an error."""
        if self._mode is None:
            if not self._buffer:
                return b""
            if not self._sniff():
                if not self.sample_rate:
                    raise ChunkError(f"{len(self._buffer)} byte(s) of audio: too short to hold a WAV header")
                self._mode, self.layout = "raw", self._raw_layout()
            if self._mode != "container":
                return self.feed(b"") + self.finish()
        if self._mode == "container":
            return self._decode_container()
        if self._mode == "wav" and self.layout is None:
            raise ChunkError("the audio ended inside its WAV header")
        if self._buffer:
            raise ChunkError(f"the audio ended inside a frame ({len(self._buffer)} of "
                             f"{self.layout.frame_bytes} bytes)")
        return b""

    def _decode_container(self) -> bytes:
        import soundfile as sf

        if not self._buffer:
            self.layout = PcmLayout("float", 4, self.sample_rate or 16000, self.channels)
            return b""
        try:
            audio, rate = sf.read(io.BytesIO(bytes(self._buffer)), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise ChunkError(f"cannot decode the {ENCODING_NAMES[self.encoding]} audio: {e}") from None
        self._buffer.clear()
        _check_rate_channels(rate, audio.shape[1])
        self.layout = PcmLayout("float", 4, rate, audio.shape[1])
        if not np.isfinite(audio).all():
            raise ChunkError("decoded audio holds non-finite samples")
        return np.ascontiguousarray(audio, dtype="<f4").tobytes()
