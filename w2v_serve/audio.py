"""The one audio loader: any file libsndfile reads (WAV, FLAC, OGG/Vorbis, ...), any sample
rate from 8,000 to 192,000 Hz (soxr high-quality resampling), any channel count (mean downmix),
integer or float PCM, returned as float32 mono in [-1, 1] at the requested rate. ``w2v
transcribe`` (``load_audio``, ``stream_audio``) and ``w2v stream`` (``read_audio``, which keeps
the file's rate and channels for the server) read files through it, with the same checks.

Every failure is an ``AudioError`` whose message names the file and the reason: what kind of
file it is when it is not a regular one (directory, FIFO, device, broken link, link loop), no
permission, empty, not audio, truncated (a WAV data chunk longer than the file), a sample rate
outside the range, samples that are NaN/Inf or more than ``MAX_PEAK`` times full scale.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
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
# Float samples beyond this many times full scale are not audio (a wrong scale, or hostile).
MAX_PEAK = 100.0
log = logging.getLogger("w2v.audio")


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
    """Header information without decoding the samples; the file is checked first (a regular,
    readable, non-empty file; a sample rate in MIN_SAMPLE_RATE..MAX_SAMPLE_RATE; a WAV whose
    data chunk is all there)."""
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: not a readable audio file ({_reason(e)})") from e
    if problem := sample_rate_problem(info.samplerate):
        raise AudioError(f"{path}: {problem}")
    if info.format in ("WAV", "WAVEX"):
        _check_wav_complete(path)
    return AudioInfo(info.samplerate, info.channels, info.frames, info.format, info.subtype)


def _check_file(path: Path) -> None:
    """What kind of file ``path`` is, in words, when it is not a readable, non-empty regular
    file (checked without opening anything that could block, such as a FIFO)."""
    try:
        st = path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise AudioError(f"{path}: symbolic link loop") from None
        if e.errno == errno.EACCES:
            raise AudioError(f"{path}: permission denied") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            if path.is_symlink():
                raise AudioError(f"{path}: broken symbolic link (to {os.readlink(path)})") from None
            raise AudioError(f"{path}: no such file") from None
        raise AudioError(f"{path}: cannot access ({e.strerror})") from None
    kind = st.st_mode
    if stat.S_ISDIR(kind):
        raise AudioError(f"{path}: is a directory")
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(kind):
            raise AudioError(f"{path}: is {what}, not a regular file")
    if st.st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: permission denied")


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
        riff_size = struct.unpack("<I", header[4:8])[0]
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF mean "unknown length" in a streamed WAV, whose RIFF size says
                # the same; with a real RIFF size, a data chunk beyond the file is truncation.
                streamed = chunk_size in (0, 0xFFFFFFFF) and riff_size in (0, 0xFFFFFFFF)
                if not streamed and pos + 8 + chunk_size > size:
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


def check_samples(data: np.ndarray, name: str) -> None:
    """Refuse samples that are not audio: NaN or Inf, or float samples far beyond full scale
    (peak over MAX_PEAK: a float file written with the wrong scale, or a hostile one); warn when
    they exceed full scale by less."""
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: contains non-finite samples (NaN or Inf)")
    peak = float(np.abs(data).max()) if data.size else 0.0
    if peak > MAX_PEAK:
        raise AudioError(f"{name}: samples reach {peak:.3g}, not audio in [-1, 1] "
                         f"(more than {MAX_PEAK:g} times full scale)")
    if peak > 1.0 + 1e-6:
        log.warning("%s: samples exceed full scale (peak %.3g); recognized as they are", name, peak)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The file's samples as they are: float32 [frames, channels] and the file's sample rate,
    with every check of ``load_audio``. The one reader of files (``load_audio``, ``w2v stream``)."""
    path = Path(path)
    info = probe(path)
    try:
        with sf.SoundFile(str(path)) as f:
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: cannot decode audio ({_reason(e)})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    check_samples(data, str(path))
    return data, info.sample_rate


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sample_rate``.

    Raises AudioError for a missing, empty, non-audio, truncated or silent-by-corruption file,
    one that is not a regular file, a sample rate outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE, or
    samples that are not audio (NaN, Inf, far beyond full scale).
    """
    data, rate = read_audio(path)
    return resample(to_mono(data), rate, sample_rate)


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
                check_samples(data, str(path))
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
    check_samples(audio, name)
    return audio
