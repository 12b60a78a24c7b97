"""The project's checkpoint format: round trip, atomic writes, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import speech_like
from training.checkpoint import Checkpoint, CheckpointError, atomic_torch_save, load_checkpoint
from training.model import wav2vec2_small
from w2v_serve.cli import main as w2v
from w2v_serve.vocab import Vocabulary


@pytest.fixture
def small_ckpt(tmp_path):
    torch.manual_seed(0)
    vocab = Vocabulary.from_characters("abcdefghijklmnopqrstuvwxyz'")
    model = wav2vec2_small(vocab_size=len(vocab)).eval()
    path = tmp_path / "small.ckpt"
    Checkpoint.from_model(model, vocab, meta={"note": "test"}).save(path)
    return model, vocab, path


def test_roundtrip_gives_identical_outputs(small_ckpt):
    model, vocab, path = small_ckpt
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "ctc" and ckpt.vocab == vocab and ckpt.meta["note"] == "test"
    x = torch.from_numpy(speech_like(8000, seed=1))[None]
    with torch.no_grad():
        assert torch.equal(ckpt.build_model()(x)[0], model(x)[0])


def test_truncated_missing_and_foreign_files(small_ckpt, tmp_path):
    _, _, path = small_ckpt
    data = path.read_bytes()
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(trunc)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "absent.ckpt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"cfg": {}, "model": {}}, foreign)
    with pytest.raises(CheckpointError, match="fairseq"):
        load_checkpoint(foreign)
    newer = tmp_path / "newer.ckpt"
    d = torch.load(path, weights_only=True)
    d["version"] = 99
    torch.save(d, newer)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(newer)


def test_vocab_must_match_head(tmp_path):
    model = wav2vec2_small(vocab_size=10)
    with pytest.raises(CheckpointError, match="10 outputs"):
        Checkpoint.from_model(model, Vocabulary.from_characters("ab")).save(tmp_path / "x.ckpt")


def test_atomic_save_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    atomic_torch_save({"v": 1}, path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)  # the crash: between write and rename
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"v": 2}, path)
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]


def test_console_script_and_info(small_ckpt, capsys):
    _, _, path = small_ckpt
    w2v_bin = Path(sys.executable).with_name("w2v")
    out = subprocess.run([str(w2v_bin), "--help"], capture_output=True, text=True, check=True).stdout
    assert "import" in out and "info" in out
    assert w2v(["info", str(path), "--json"]) == 0
    assert '"kind": "ctc"' in capsys.readouterr().out
