"""The Dockerfile cannot be built here (no Docker engine); check what can be: every file it
copies exists, and the repository it writes uses the native backends' configs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_copies_existing_files():
    text = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for src in line.split()[:-1]:
            if src.startswith("${"):
                continue
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "entrypoint" in text and (ROOT / "docker" / "entrypoint.sh").stat().st_mode & 0o111


def test_native_repository_configs(tmp_path):
    from w2v_serve.triton.repository import NATIVE_CONFIGS, write_repository
    from tests.serve_helpers import tiny_model_dir

    repo = write_repository(tiny_model_dir("attention"), tmp_path / "repo", native="onnxruntime")
    config = (repo / "acoustic" / "config.pbtxt").read_text()
    assert config == NATIVE_CONFIGS["onnxruntime"] and 'platform: "onnxruntime_onnx"' in config
    assert (repo / "acoustic" / "1" / "model.onnx").exists() and not (repo / "acoustic" / "1" / "model.py").exists()
    # The python models that decode and stream read the same model directory.
    assert (repo / "streaming" / "1" / "model.py").exists() and (repo / "acoustic" / "1" / "vocab.json").exists()
