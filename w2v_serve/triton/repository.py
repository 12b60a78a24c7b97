"""Write a Triton model repository around an exported model directory.

The project's ``model_repository/`` holds the configs and the Python models (``acoustic``,
``offline``, ``streaming``); this copies them to the target (unless the target *is* that
folder) and writes the model directory into ``acoustic/1/``, which the other two reference.

``native="onnxruntime"`` replaces the acoustic model's config with one for Triton's native
ONNX Runtime backend (GPU instance, TensorRT execution accelerator with fp16), as used on
NVIDIA's tritonserver image; ``native="tensorrt"`` with one for the TensorRT backend, whose
``model.plan`` is built on the target GPU by ``trtexec`` (the Dockerfile does it; a plan is
specific to a GPU and TensorRT version, so it is never shipped).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Optional

from w2v_serve.model_dir import CARD_NAME, ModelDirectory
from w2v_serve.triton.launcher import DEFAULT_REPOSITORY

MODELS = ("acoustic", "offline", "streaming")
NATIVE_BACKENDS = ("onnxruntime", "tensorrt")

# Acoustic-model configs for Triton's native backends (NVIDIA's image): templates/acoustic_<backend>.pbtxt
_TEMPLATES = Path(__file__).parent / "templates"
NATIVE_CONFIGS = {name: (_TEMPLATES / f"acoustic_{name}.pbtxt").read_text() for name in NATIVE_BACKENDS}


class RepositoryError(ValueError):
    """A target or template that cannot be used."""


def write_repository(model_dir: str | Path, repository: str | Path, *, native: Optional[str] = None,
                     template: str | Path = DEFAULT_REPOSITORY,
                     streaming: Optional[dict[str, object]] = None,
                     idle_timeout_s: Optional[float] = None) -> Path:
    """Populate ``repository`` with the Triton models and ``model_dir``'s files.

    streaming: overrides of the streaming model's window parameters (chunk_ms, left_context_ms,
    right_context_ms, endpoint_ms). idle_timeout_s: the streaming sequences' idle timeout.
    """
    model = ModelDirectory.load(model_dir)  # validates the directory before anything is written
    repository, template = Path(repository).resolve(), Path(template).resolve()
    if native is not None and native not in NATIVE_BACKENDS:
        raise RepositoryError(f"unknown native backend {native!r}; choose from {', '.join(NATIVE_BACKENDS)}")
    for name in MODELS:
        src = template / name
        if not (src / "config.pbtxt").exists():
            raise RepositoryError(f"{template}: template has no {name}/config.pbtxt")
        dst = repository / name
        if src != dst:
            (dst / "1").mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / "config.pbtxt", dst / "config.pbtxt")
            shutil.copy2(src / "1" / "model.py", dst / "1" / "model.py")
    weights = repository / "acoustic" / "1"
    for f in sorted(model.path.iterdir()):
        if model.file(f.name, "file").is_file():      # nothing from outside the directory
            shutil.copy2(f, weights / f.name)
    if native is not None:
        (weights / "model.py").unlink(missing_ok=True)
        (repository / "acoustic" / "config.pbtxt").write_text(NATIVE_CONFIGS[native])
    if streaming or idle_timeout_s is not None:
        _edit_streaming_config(repository / "streaming" / "config.pbtxt", streaming or {}, idle_timeout_s)
    assert (weights / CARD_NAME).exists()
    return repository


def _edit_streaming_config(path: Path, params: dict[str, object], idle_timeout_s: Optional[float]) -> None:
    text = path.read_text()
    for key, value in params.items():
        pattern = rf'(parameters \{{ key: "{re.escape(key)}" value: \{{ string_value: )"[^"]*"'
        if not re.search(pattern, text):
            raise RepositoryError(f"streaming config has no parameter {key!r}")
        text = re.sub(pattern, rf'\1"{value}"', text)
    if idle_timeout_s is not None:
        text = re.sub(r"max_sequence_idle_microseconds: \d+",
                      f"max_sequence_idle_microseconds: {int(idle_timeout_s * 1e6)}", text)
    path.write_text(text)

