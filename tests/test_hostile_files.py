"""Booby-trapped and broken files: one audio reader for `w2v transcribe` and `w2v stream` with a
clear message per kind of file, absurd float samples, fine-tuning without transcripts, exports
killed half-way or repeated into the same directory."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from w2v_serve.audio import AudioError, load_audio, read_audio, stream_audio

ROOT = Path(__file__).resolve().parent.parent


def _tone(path: Path, seconds: float = 0.5, rate: int = 16000, subtype: str = "PCM_16", scale: float = 0.5) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    sf.write(str(path), (scale * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, subtype=subtype)
    return path


def _claims_4gb(path: Path) -> Path:
    """A WAV whose data chunk claims 0xFFFFFFF0 bytes (4 GB) with a real RIFF size."""
    _tone(path)
    raw = bytearray(path.read_bytes())
    pos = raw.index(b"data")
    raw[pos + 4:pos + 8] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(bytes(raw))
    return path


def _make(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"{kind}.wav"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "loop":
        os.symlink(tmp_path / "loop2.wav", p)
        os.symlink(p, tmp_path / "loop2.wav")
    elif kind == "broken link":
        os.symlink(tmp_path / "gone.wav", p)
    elif kind == "directory":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "unreadable":
        _tone(p)
        p.chmod(0)
    elif kind == "4 GB header":
        _claims_4gb(p)
    elif kind == "rate 1 Hz":
        _tone(p, rate=8000)
        raw = bytearray(p.read_bytes())
        raw[24:28] = struct.pack("<I", 1)          # fmt chunk: sample rate
        raw[28:32] = struct.pack("<I", 2)          # byte rate
        p.write_bytes(bytes(raw))
    elif kind == "x1e30":
        _tone(p, subtype="FLOAT", scale=1e30)
    return p


CASES = {"fifo": "FIFO", "loop": "symbolic link loop", "broken link": "broken symbolic link",
         "directory": "is a directory", "empty": "empty file", "unreadable": "permission denied",
         "4 GB header": "truncated", "rate 1 Hz": "8000..192000 Hz", "x1e30": "not audio in [-1, 1]"}


@pytest.mark.parametrize("kind", list(CASES))
def test_every_reader_gives_the_same_clear_reason(tmp_path, kind):
    if kind == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = _make(tmp_path, kind)
    for read in (load_audio, read_audio, lambda p: next(stream_audio(p))):
        with pytest.raises(AudioError) as info:
            read(path)
        assert CASES[kind] in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["fifo", "loop", "4 GB header", "x1e30"])
def test_stream_and_transcribe_refuse_alike(tmp_path, kind):
    """`w2v stream` refuses before connecting (no server listens there), with the message `w2v
    transcribe` gives for the same file."""
    path = _make(tmp_path, kind)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stream = subprocess.run([sys.executable, "-m", "w2v_serve.cli", "stream", str(path), "--server", "127.0.0.1:9",
                             "--timeout", "5"], capture_output=True, text=True, timeout=60, env=env)
    assert stream.returncode == 2 and CASES[kind] in stream.stderr and "Traceback" not in stream.stderr, stream.stderr
    from w2v_serve.audio import probe

    reason = stream.stderr.strip().split("error: ", 1)[1]
    with pytest.raises(AudioError) as info:
        probe(path) if kind != "x1e30" else load_audio(path)
    assert str(info.value) == reason


def test_streamed_wav_of_unknown_length_is_read(tmp_path):
    """0xFFFFFFFF sizes in both the RIFF and data headers: a WAV written to a pipe."""
    path = _tone(tmp_path / "piped.wav")
    raw = bytearray(path.read_bytes())
    raw[4:8] = struct.pack("<I", 0xFFFFFFFF)
    pos = raw.index(b"data")
    raw[pos + 4:pos + 8] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    assert abs(len(load_audio(path)) - 8000) <= 1


def test_float_samples_over_full_scale_warn_and_absurd_ones_fail(tmp_path, caplog):
    loud = _tone(tmp_path / "loud.wav", subtype="FLOAT", scale=2.0)
    assert np.abs(load_audio(loud)).max() == pytest.approx(2.0, rel=1e-3)
    assert any("exceed full scale" in r.getMessage() for r in caplog.records)
    with pytest.raises(AudioError, match="not audio"):
        load_audio(_tone(tmp_path / "absurd.wav", subtype="FLOAT", scale=1e6))


def test_finetune_without_transcripts_is_one_line(tmp_path):
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\n")
    _tone(tmp_path / "a.wav")
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\na.wav\t8000\n")
    out = subprocess.run([sys.executable, "-m", "w2v_serve.cli", "finetune", str(ROOT / "configs" / "finetune_small.yaml"),
                          f"data.train={tmp_path}/train.tsv", f"data.valid={tmp_path}/train.tsv", "task.init=",
                          f"run.save_dir={tmp_path}/ck"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode != 0 and "transcripts" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.slow
def test_export_cleans_killed_staging_and_stale_variants(tmp_path):
    from export.exporter import export_model
    from tests.test_export import SMALL_TOKENS, small_checkpoint

    ckpt = small_checkpoint(vocab_size=len(SMALL_TOKENS))
    out = export_model(ckpt, tmp_path / "m", int8=True, check=False)
    assert sorted(p.name for p in out.glob("*.int8.onnx"))
    killed = tmp_path / ".m.export-999999999-abcd"        # what an export killed mid-way leaves
    (killed / "sub").mkdir(parents=True)
    (killed / "model.onnx").write_bytes(b"partial")
    running = tmp_path / f".m.export-{os.getppid()}-efgh"   # an export still running (a live process)
    running.mkdir()
    export_model(ckpt, out, check=False)                     # again, without int8
    assert not killed.exists() and running.exists()
    assert not list(out.glob("*.int8.onnx")), sorted(p.name for p in out.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.") and p != running]
    from w2v_serve.model_dir import ModelDirectory

    assert list(ModelDirectory.load(out).card.variants) == ["fp32"]
