"""The audio loader: formats, rates, channels, sample types, and clear per-file errors."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr

from w2v_serve.audio import AudioError, load_audio, stream_audio, validate_array


def tone(sr: int, seconds: float = 1.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype,sr", [
    ("WAV", "PCM_16", 16000), ("WAV", "FLOAT", 16000), ("WAV", "PCM_24", 44100), ("WAV", "PCM_32", 8000),
    ("FLAC", "PCM_16", 44100), ("OGG", "VORBIS", 16000), ("OGG", "VORBIS", 8000),
])
def test_formats_rates_and_sample_types_load_as_16k_float_mono(tmp_path, fmt, subtype, sr):
    x = tone(sr)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, sr, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 16000) <= 1
    # Same tone, resampled: compare with soxr applied to the original samples.
    ref = soxr.resample(x, sr, 16000, quality="VHQ")
    n = min(len(ref), len(y))
    lossy = fmt == "OGG"
    err = np.abs(y[:n] - ref[:n])[200:-200].max()
    assert err < (0.05 if lossy else 2e-4), err
    assert np.array_equal(np.concatenate(list(stream_audio(path, block_frames=3000))), y)


def test_stereo_is_downmixed_by_averaging(tmp_path):
    left, right = tone(16000, freq=300), tone(16000, freq=500)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), (left + right) / 2, atol=1e-6)


def test_sox_written_files_load(tmp_path):
    # A file from another tool: sox writes 22.05 kHz 8-bit unsigned stereo.
    sf.write(tmp_path / "in.wav", tone(22050), 22050)
    out = tmp_path / "u8.wav"
    subprocess.run(["sox", str(tmp_path / "in.wav"), "-b", "8", "-e", "unsigned-integer", "-c", "2", str(out)],
                   check=True)
    y = load_audio(out)
    assert abs(len(y) - 16000) <= 1 and 0.4 < np.abs(y).max() < 0.6


@pytest.mark.parametrize("case,reason", [
    ("missing", "no such file"), ("empty", "empty file"), ("text", "not a readable audio file"),
    ("truncated", "truncated"), ("nan", "non-finite"), ("no_samples", "no samples"), ("directory", "is a directory"),
])
def test_bad_files_raise_audio_error_naming_file_and_reason(tmp_path, case, reason):
    path = tmp_path / f"{case}.wav"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is a transcript, not audio\n" * 20)
    elif case == "truncated":
        sf.write(path, tone(16000), 16000, subtype="PCM_16")
        path.write_bytes(path.read_bytes()[:10000])
    elif case == "nan":
        x = tone(16000)
        x[100] = np.nan
        sf.write(path, x, 16000, subtype="FLOAT")
    elif case == "no_samples":
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif case == "directory":
        path.mkdir()
    with pytest.raises(AudioError, match=reason) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    with pytest.raises(AudioError, match=reason):
        list(stream_audio(path))


def test_arrays_int_and_float_mono_and_multichannel():
    x = tone(16000)
    ints = (x * 32767).astype(np.int16)
    np.testing.assert_allclose(validate_array(ints), x, atol=1e-4)
    np.testing.assert_allclose(validate_array(np.stack([x, x], 1)), x)
    with pytest.raises(AudioError, match="non-finite"):
        validate_array(np.array([0.0, np.inf], np.float32))
    with pytest.raises(AudioError, match="no samples"):
        validate_array(np.zeros(0, np.float32))
