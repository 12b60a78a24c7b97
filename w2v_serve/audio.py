"""The one audio loader: any file libsndfile reads (WAV, FLAC, OGG/Vorbis, ...), any sample
rate (soxr high-quality resampling), any channel count (mean downmix), integer or float PCM,
returned as float32 mono in [-1, 1] at the requested rate.

Every failure is an ``AudioError`` whose message names the file and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
# The sample rates audio uses, from narrow-band telephony to studio recordings. Anything outside is
# refused wherever a rate comes from a client or a file: a rate of 1 Hz would make every sample a
# second of audio to resample and recognize.
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000


class AudioError(ValueError):
    """A file that cannot be used as audio; the message says which and why."""


def sample_rate_problem(rate: int) -> str | None:
    """Why ``rate`` is not an audio sample rate this project takes (None when it is one)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        return f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
    return None


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def probe(path: str | Path) -> AudioInfo:
    """Header information without decoding the samples."""
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: not a readable audio file ({_reason(e)})") from e
    return AudioInfo(info.samplerate, info.channels, info.frames, info.format, info.subtype)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")


def _reason(e: Exception) -> str:
    msg = str(e)
    return msg.split(": ", 1)[-1] if ": " in msg else msg


def _check_wav_complete(path: Path) -> None:
    """libsndfile quietly reads what is there; a RIFF data chunk that declares more bytes than
    the file holds is a truncated file (an interrupted copy or download)."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF mean "unknown length" (streamed WAV / RF64): nothing to check.
                if chunk_size not in (0, 0xFFFFFFFF) and pos + 8 + chunk_size > size:
                    have = size - pos - 8
                    raise AudioError(f"{path}: truncated (data chunk declares {chunk_size} bytes, {have} present)")
                return
            pos += 8 + chunk_size + (chunk_size & 1)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """High-quality (soxr VHQ) resampling of float32 mono audio."""
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    if orig_sr <= 0:
        raise AudioError(f"invalid sample rate {orig_sr}")
    return soxr.resample(audio.astype(np.float32, copy=False), orig_sr, target_sr, quality="VHQ").astype(np.float32)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """[frames, channels] or [frames] -> [frames], by averaging the channels."""
    if audio.ndim == 1:
        return audio
    return audio.mean(axis=1, dtype=np.float32)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sample_rate``.

    Raises AudioError for a missing, empty, non-audio, truncated or silent-by-corruption file,
    or one with non-finite samples.
    """
    path = Path(path)
    info = probe(path)
    try:
        with sf.SoundFile(str(path)) as f:
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: cannot decode audio ({_reason(e)})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    if info.format in ("WAV", "WAVEX"):
        _check_wav_complete(path)
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains non-finite samples (NaN or Inf)")
    return resample(to_mono(data), info.sample_rate, sample_rate)


def stream_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, block_frames: int = 1 << 18) -> Iterator[np.ndarray]:
    """``load_audio`` in blocks, for recordings of any length: yields float32 mono chunks at
    ``sample_rate`` (streaming soxr, same quality) while holding one block in memory.

    The file is checked (exists, non-empty, readable, not truncated) before the first block;
    a block with non-finite samples raises AudioError when it is reached.
    """
    path = Path(path)
    info = probe(path)
    if info.frames == 0:
        raise AudioError(f"{path}: contains no samples")
    if info.format in ("WAV", "WAVEX"):
        _check_wav_complete(path)
    resampler = None
    if info.sample_rate != sample_rate:
        if info.sample_rate <= 0:
            raise AudioError(f"{path}: invalid sample rate {info.sample_rate}")
        resampler = soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32", quality="VHQ")
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                data = f.read(block_frames, dtype="float32", always_2d=True)
                last = data.shape[0] < block_frames
                if not np.isfinite(data).all():
                    raise AudioError(f"{path}: contains non-finite samples (NaN or Inf)")
                mono = to_mono(data)
                out = resampler.resample_chunk(mono, last=last) if resampler is not None else mono
                if len(out):
                    yield out.astype(np.float32, copy=False)
                if last:
                    return
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: cannot decode audio ({_reason(e)})") from e


def validate_array(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    """Check an in-memory waveform (1-D or [frames, channels]) and return float32 mono."""
    audio = np.asarray(audio)
    if audio.ndim not in (1, 2):
        raise AudioError(f"{name}: expected 1-D or [frames, channels] audio, got shape {audio.shape}")
    if audio.dtype.kind in "iu":
        audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
    audio = to_mono(audio.astype(np.float32, copy=False))
    if audio.size == 0:
        raise AudioError(f"{name}: contains no samples")
    if not np.isfinite(audio).all():
        raise AudioError(f"{name}: contains non-finite samples (NaN or Inf)")
    return audio
