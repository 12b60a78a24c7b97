"""The CTC output vocabulary, shared by training, export and the runtime.

A vocabulary is an ordered list of tokens: index ``i`` is the meaning of logit ``i``.
Conventions (those of fairseq's and transformers' wav2vec 2.0 character models):

* index 0 is the CTC *blank* (``<pad>`` in transformers' vocab.json, ``<s>`` in fairseq);
* ``|`` is the word delimiter (a space in text);
* ``<unk>`` stands for a character the vocabulary does not hold.

It reads transformers' ``vocab.json`` and fairseq's ``dict.ltr.txt``, and is stored as a
plain list of strings inside checkpoints and model directories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

BLANK = "<pad>"
WORD_DELIMITER = "|"
UNK = "<unk>"
# fairseq's Dictionary puts these four first; the blank is the bos symbol at index 0.
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
# Tokens that never appear in a transcript.
_SPECIAL_TOKENS = {"<pad>", "<s>", "</s>", "<unk>", "<blank>"}


class VocabularyError(ValueError):
    """A vocabulary file or token list that cannot be used for CTC."""


@dataclass(frozen=True)
class Vocabulary:
    """Ordered CTC tokens with blank at index 0.

    Attributes:
        tokens: token strings; ``tokens[i]`` is the label of logit ``i``.
        word_delimiter: token that separates words (``|``).
        unk: token used for characters outside the vocabulary.
    """

    tokens: tuple[str, ...]
    word_delimiter: str = WORD_DELIMITER
    unk: str = UNK
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        if len(tokens) < 2:
            raise VocabularyError("a CTC vocabulary needs a blank and at least one token")
        index: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str) or tok == "":
                raise VocabularyError(f"token {i} is not a non-empty string: {tok!r}")
            if tok in index:
                raise VocabularyError(f"token {tok!r} appears twice (indices {index[tok]} and {i})")
            index[tok] = i
        object.__setattr__(self, "_index", index)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_characters(cls, characters: Iterable[str]) -> "Vocabulary":
        """Blank, ``<unk>``, ``|`` then the given characters (sorted, spaces dropped)."""
        chars = sorted({c for c in characters if c not in (" ", WORD_DELIMITER)})
        return cls((BLANK, UNK, WORD_DELIMITER, *chars))

    @classmethod
    def from_hf_vocab_json(cls, path: str | Path) -> "Vocabulary":
        """Read transformers' ``vocab.json`` (``{token: index}``, blank ``<pad>`` at 0)."""
        path = Path(path)
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise VocabularyError(f"{path}: cannot read vocab.json: {e}") from e
        # Multi-lingual checkpoints nest one vocabulary per language; take the only one.
        if mapping and all(isinstance(v, dict) for v in mapping.values()):
            if len(mapping) != 1:
                raise VocabularyError(
                    f"{path}: holds {len(mapping)} language vocabularies {sorted(mapping)}; "
                    "pick one and save it as a flat vocab.json"
                )
            mapping = next(iter(mapping.values()))
        if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
            raise VocabularyError(f"{path}: expected a JSON object of token -> integer index")
        n = len(mapping)
        by_index = sorted(mapping.items(), key=lambda kv: kv[1])
        if [i for _, i in by_index] != list(range(n)):
            raise VocabularyError(f"{path}: indices are not exactly 0..{n - 1}")
        tokens = [t for t, _ in by_index]
        # transformers' tokenizer writes a space as the delimiter in some vocabularies.
        delimiter = WORD_DELIMITER if WORD_DELIMITER in mapping else (" " if " " in mapping else WORD_DELIMITER)
        unk = UNK if UNK in mapping else tokens[0]
        return cls(tuple(tokens), word_delimiter=delimiter, unk=unk)

    @classmethod
    def from_fairseq_dict(cls, path: str | Path) -> "Vocabulary":
        """Read fairseq's ``dict.ltr.txt`` (``TOKEN COUNT`` per line).

        fairseq's Dictionary prepends ``<s> <pad> </s> <unk>``; its CTC blank is index 0 (``<s>``).
        We name index 0 ``<pad>`` and index 1 ``<s>`` as transformers' converter does, so the
        indices (and therefore the CTC head's rows) stay the same.
        """
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise VocabularyError(f"{path}: cannot read dictionary: {e}") from e
        tokens = ["<pad>", "<s>", "</s>", "<unk>"]
        for n, line in enumerate(lines, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.rsplit(" ", 1)
            tok = parts[0]
            if len(parts) == 2 and parts[1] == "#fairseq:overwrite":
                tok = parts[0].rsplit(" ", 1)[0]
            elif len(parts) == 2 and not parts[1].lstrip("-").isdigit():
                raise VocabularyError(f"{path}:{n}: expected 'TOKEN COUNT', got {line!r}")
            if tok in tokens:
                raise VocabularyError(f"{path}:{n}: token {tok!r} duplicated")
            tokens.append(tok)
        return cls(tuple(tokens))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """Read any supported vocabulary file: vocab.json, dict.*.txt, or our tokens.txt."""
        path = Path(path)
        if path.suffix == ".json":
            return cls.from_hf_vocab_json(path)
        if path.name.startswith("dict."):
            return cls.from_fairseq_dict(path)
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except OSError as e:
            raise VocabularyError(f"{path}: cannot read vocabulary: {e}") from e
        if lines and lines[-1] == "":
            lines.pop()
        return cls(tuple(lines))

    def save(self, path: str | Path) -> None:
        """Write ``vocab.json`` (transformers' ``{token: index}``) or, for any other suffix,
        one token per line; ``load`` reads both back."""
        path = Path(path)
        if path.suffix == ".json":
            mapping = {t: i for i, t in enumerate(self.tokens)}
            path.write_text(json.dumps(mapping, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            return
        if any("\n" in t for t in self.tokens):
            raise VocabularyError("a token contains a newline")
        path.write_text("\n".join(self.tokens) + "\n", encoding="utf-8")

    def to_dict(self) -> dict:
        return {"tokens": list(self.tokens), "word_delimiter": self.word_delimiter, "unk": self.unk}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(tuple(d["tokens"]), word_delimiter=d.get("word_delimiter", WORD_DELIMITER), unk=d.get("unk", UNK))

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> str:
        return self.tokens[i]

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def index(self, token: str) -> int:
        return self._index[token]

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def word_delimiter_id(self) -> int | None:
        return self._index.get(self.word_delimiter)

    @property
    def unk_id(self) -> int | None:
        return self._index.get(self.unk)

    @property
    def is_uppercase(self) -> bool:
        """True when the letters are upper case (transformers' English models)."""
        letters = [t for t in self.tokens if len(t) == 1 and t.isalpha()]
        return bool(letters) and all(t.isupper() for t in letters)

    def normalize_text(self, text: str) -> str:
        """Case-fold and collapse whitespace the way the vocabulary expects."""
        text = " ".join(text.split())
        return text.upper() if self.is_uppercase else text.lower() if self._has_lowercase() else text

    def _has_lowercase(self) -> bool:
        return any(len(t) == 1 and t.isalpha() and t.islower() for t in self.tokens)

    def encode(self, text: str) -> list[int]:
        """Characters to indices; spaces become the word delimiter, unknowns ``<unk>``.

        Raises VocabularyError when a character is unknown and there is no ``<unk>``.
        """
        ids: list[int] = []
        delim = self.word_delimiter_id
        unk = self.unk_id
        for ch in self.normalize_text(text):
            if ch == " ":
                if delim is None:
                    raise VocabularyError("text has spaces but the vocabulary has no word delimiter")
                ids.append(delim)
            elif ch in self._index:
                ids.append(self._index[ch])
            elif unk is not None:
                ids.append(unk)
            else:
                raise VocabularyError(f"character {ch!r} is not in the vocabulary and there is no {self.unk!r}")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Label indices (already CTC-collapsed, blanks removed) to text."""
        out = []
        for i in ids:
            tok = self.tokens[int(i)]
            if tok == self.word_delimiter:
                out.append(" ")
            elif tok in _SPECIAL_TOKENS:
                continue
            else:
                out.append(tok)
        return " ".join("".join(out).split())

    def pyctcdecode_labels(self) -> list[str]:
        """Labels in the form pyctcdecode expects: blank "", delimiter " ", specials dropped."""
        labels = []
        for i, tok in enumerate(self.tokens):
            if i == self.blank_id:
                labels.append("")
            elif tok == self.word_delimiter:
                labels.append(" ")
            elif tok in _SPECIAL_TOKENS:
                # pyctcdecode needs unique labels; a special never appears in text.
                labels.append(f"⁇{i}")
            else:
                labels.append(tok)
        return labels
