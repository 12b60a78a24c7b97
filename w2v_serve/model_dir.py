"""The model directory: what ``w2v export`` writes and what every ``--model`` takes.

Layout::

    DIR/
      model_card.json      this module's ModelCard (format "w2v-model", version 1)
      vocab.json           the CTC vocabulary ({token: index}); the card's "special_tokens" names the
                           blank (config.pad_token_id of a transformers model), pad, unk, word
                           delimiter, bos/eos and other specials (none of them reach text)
      model.onnx           full graph:  audio f32 [B, S], lengths i64 [B]
                                        -> logits f32 [B, T, V], logit_lengths i64 [B]
      encoder.onnx         conv encoder: audio, lengths -> features f32 [B, T, C], feature_lengths i64 [B]
      transformer.onnx     context network + CTC head: features, feature_lengths -> logits, logit_lengths
      model.fp16.onnx, model.int8.onnx, ...   optional variants, listed in the card
      precision_check.json  optional: argmax agreement and speed of each runtime/precision on
                           speech (w2v precision-check), a record per kind of CPU checked; the
                           engine's default precision comes from it

``audio`` is raw 16 kHz mono in [-1, 1]; the graphs apply the model's own input normalization.
``logits`` are log-probabilities when the card says ``"logits_are_log_probs": true``.

Every file the directory names (the card's graphs and language model, the vocabulary, the card
itself) is resolved inside the directory: a name must be relative, without ``..``, and must not
lead outside through a symbolic link; anything else is a ``ModelDirError`` and nothing is opened.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from w2v_serve.vocab import Vocabulary

FORMAT = "w2v-model"
VERSION = 1
CARD_NAME = "model_card.json"
VOCAB_NAME = "vocab.json"
PRECISION_CHECK_NAME = "precision_check.json"   # w2v_serve.precision's record (optional)

# Graph names and their I/O, the contract between export/ and the runtime.
FULL_GRAPH = "model"
ENCODER_GRAPH = "encoder"
TRANSFORMER_GRAPH = "transformer"
GRAPH_IO = {
    FULL_GRAPH: (("audio", "lengths"), ("logits", "logit_lengths")),
    ENCODER_GRAPH: (("audio", "lengths"), ("features", "feature_lengths")),
    TRANSFORMER_GRAPH: (("features", "feature_lengths"), ("logits", "logit_lengths")),
}


class ModelDirError(ValueError):
    """A model directory that is missing, incomplete, or of another format."""


@dataclass
class ModelCard:
    name: str = ""                          # what a server calls it (default: the directory's name)
    language_code: str = ""                 # BCP-47, e.g. "en-US" (a server assumes en-US when empty)
    sample_rate: int = 16000
    frame_stride: int = 320                 # samples per output frame (20 ms)
    receptive_field: int = 400              # samples seen by one frame of the conv encoder
    logits_are_log_probs: bool = True
    # variant name -> {graph name -> file name}, e.g. {"fp32": {"model": "model.onnx", ...}}
    variants: dict[str, dict[str, str]] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)      # the CTC tokens (vocab.json holds the same)
    # The tokens' roles (Vocabulary.special_tokens()): blank, pad, unk, word_delimiter, bos, eos,
    # other_specials, plus blank_id and the full list of specials for readers. Empty in
    # directories written before roles were recorded: blank at 0, the usual names special.
    special_tokens: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)     # checkpoint path, sha256, meta
    checks: dict[str, Any] = field(default_factory=dict)     # parity results per variant
    versions: dict[str, str] = field(default_factory=dict)   # torch / onnx / onnxruntime
    extra: dict[str, Any] = field(default_factory=dict)      # training data, metrics, notes
    # The language model shipped in the directory, with weights tuned for this model:
    # {"lm": "lm.arpa", "unigrams": "lm.unigrams.txt", "alpha": 0.8, "beta": 1.0, "tuned_on": "..."}
    decoding: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        if d.get("format") != FORMAT:
            raise ModelDirError(f"model card format is {d.get('format')!r}, expected {FORMAT!r}")
        if not isinstance(d.get("version"), int) or d["version"] > VERSION:
            raise ModelDirError(f"model card version {d.get('version')!r} is newer than supported ({VERSION})")
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in d.items() if k in known}
        defaults = cls()
        for k, v in values.items():      # a hand-edited card fails here, not deep in a worker
            want = type(getattr(defaults, k))
            ok = isinstance(v, want) and not (want is int and isinstance(v, bool)) if want is not float \
                else isinstance(v, (int, float)) and not isinstance(v, bool)
            if not ok:
                raise ModelDirError(f"model card field {k!r} must be a {want.__name__}, got {type(v).__name__}")
        for variant, graphs in values.get("variants", {}).items():
            if not isinstance(graphs, dict):
                raise ModelDirError(f"model card variant {variant!r} must map graph names to file names")
        return cls(**values)

    @property
    def frame_seconds(self) -> float:
        return self.frame_stride / self.sample_rate


@dataclass
class ModelDirectory:
    path: Path
    card: ModelCard
    vocab: Vocabulary

    @classmethod
    def load(cls, path: str | Path) -> "ModelDirectory":
        path = Path(path)
        if not path.is_dir():
            raise ModelDirError(f"{path}: not a model directory (run `w2v export CKPT --out DIR` to make one)")
        card_path = path / CARD_NAME
        try:
            card_path = inside(path, CARD_NAME, "card")
            card = ModelCard.from_dict(json.loads(card_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ModelDirError(f"{path}: no {CARD_NAME}; not a w2v model directory") from None
        except json.JSONDecodeError as e:
            raise ModelDirError(f"{card_path}: not valid JSON: {e}") from e
        except (UnicodeDecodeError, OSError) as e:
            raise ModelDirError(f"{card_path}: cannot read the model card ({e})") from None
        vocab = Vocabulary.load(inside(path, VOCAB_NAME, "vocabulary")).with_roles(card.special_tokens)
        return cls(path, card, vocab)

    def file(self, name: object, what: str) -> Path:
        """``name`` (from the card) as a path inside this directory; ModelDirError otherwise."""
        return inside(self.path, name, what)

    def graph_path(self, graph: str = FULL_GRAPH, variant: str = "fp32") -> Path:
        try:
            name = self.card.variants[variant][graph]
        except KeyError:
            have = {v: sorted(g) for v, g in self.card.variants.items()}
            raise ModelDirError(f"{self.path}: no {graph!r} graph in variant {variant!r} (has {have})") from None
        p = self.file(name, f"{graph!r} graph of variant {variant!r}")
        if not p.exists():
            raise ModelDirError(f"{p}: listed in the model card but missing")
        return p

    def write_card(self) -> None:
        write_card(self.path, self.card)

    @property
    def precision_checks(self) -> list[dict[str, Any]]:
        """The precision check's records beside the card (``w2v precision-check``), one per kind of
        CPU it ran on; [] when it never ran."""
        return read_precision_checks(self.file(PRECISION_CHECK_NAME, "precision check"))

    @property
    def shipped_lm(self) -> Optional[Path]:
        """The language model file the card names (inside this directory), if any."""
        name = self.card.decoding.get("lm")
        if not name:
            return None
        p = self.file(name, "language model")
        if not p.exists():
            raise ModelDirError(f"{p}: language model named in the model card but missing")
        return p


def inside(directory: str | Path, name: object, what: str = "file") -> Path:
    """``directory / name`` when it stays inside ``directory``: ``name`` a non-empty relative
    path without ``..`` whose resolved location (symbolic links followed) is in the directory's
    resolved location. Otherwise a one-line ModelDirError; nothing is opened."""
    directory = Path(directory)
    if not isinstance(name, str) or not name or "\0" in name:
        raise ModelDirError(f"{directory}: the model card's {what} must be a file name, got {name!r}")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ModelDirError(f"{directory}: the model card's {what} {name!r} is outside the model directory "
                            "(names must be relative, without '..')")
    root = directory.resolve()
    try:
        target = (directory / relative).resolve()
    except (OSError, RuntimeError) as e:     # a symbolic link loop
        raise ModelDirError(f"{directory}: the model card's {what} {name!r} cannot be resolved ({e})") from None
    if target != root and root not in target.parents:
        raise ModelDirError(f"{directory}: the model card's {what} {name!r} leads outside the model directory "
                            f"(to {target})")
    return directory / relative


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that a reader sees the old file or the whole new one, never
    a part: written beside it under a unique temporary name, then renamed over it (so concurrent
    writers never share a temporary file)."""
    import os
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        mask = os.umask(0o022)     # what a plain open() would give the file (mkstemp gives 0600)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_card(directory: str | Path, card: ModelCard) -> None:
    write_text_atomic(Path(directory) / CARD_NAME, json.dumps(card.to_dict(), indent=2, default=str) + "\n")


def default_model_dir() -> Optional[Path]:
    """The bundled default model, if this installation has one."""
    here = Path(__file__).resolve().parent / "models" / "default"
    return here if (here / CARD_NAME).exists() else None


def read_precision_checks(path: Path) -> list[dict[str, Any]]:
    """The records of a precision check file (a file of the first format holds one record)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{path}: not valid JSON: {e}") from e
    records = data.get("records") if isinstance(data, dict) else None
    if records is None:
        return [data] if isinstance(data, dict) and "results" in data else []
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ModelDirError(f"{path}: 'records' must be a list of precision check records")
    return records
