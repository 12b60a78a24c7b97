"""The CTC output vocabulary, shared by training, export and the runtime.

A vocabulary is an ordered list of tokens: index ``i`` is the meaning of logit ``i``. Besides
the tokens it names, explicitly, the tokens that have a role:

* ``blank``: the CTC blank (transformers: ``config.pad_token_id``, ``<pad>`` at index 0 in
  English models, ``[PAD]`` last in the XLSR fine-tuning recipe; fairseq: index 0);
* ``word_delimiter``: the token that stands for a space (``|``);
* ``unk``: the token for characters the vocabulary does not hold;
* ``pad``, ``bos``, ``eos`` and ``other_specials``: tokens that never reach a transcript.

Every decoder (greedy, beam search, streaming, Triton, the service) reads these fields; the
*special* tokens (``specials``: blank, pad, unk, bos, eos and the others, never the word
delimiter) are dropped from text. A vocabulary without explicit roles (an older model
directory, ``tokens.txt``) takes index 0 as blank and the names ``<pad> <s> </s> <unk>
<blank>`` as specials.

It reads transformers' ``vocab.json`` (with the tokenizer files beside it: ``added_tokens.json``,
``tokenizer_config.json``, ``special_tokens_map.json``) and fairseq's ``dict.ltr.txt``; it is
stored as ``to_dict()`` inside checkpoints and as ``vocab.json`` plus the model card's
``special_tokens`` in model directories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

BLANK = "<pad>"
WORD_DELIMITER = "|"
UNK = "<unk>"
# fairseq's Dictionary puts these four first; the blank is the bos symbol at index 0.
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
# Names taken as special when a vocabulary does not say (older files).
DEFAULT_SPECIAL_NAMES = ("<pad>", "<s>", "</s>", "<unk>", "<blank>")
# The role fields, in the order ``special_tokens()`` writes them.
ROLES = ("blank", "pad", "unk", "word_delimiter", "bos", "eos")


class VocabularyError(ValueError):
    """A vocabulary file or token list that cannot be used for CTC."""


@dataclass(frozen=True)
class Vocabulary:
    """Ordered CTC tokens and the tokens that have a role.

    Attributes:
        tokens: token strings; ``tokens[i]`` is the label of logit ``i``.
        word_delimiter: token that separates words (``|``).
        unk: token used for characters outside the vocabulary.
        blank: the CTC blank; None means ``tokens[0]``.
        pad, bos, eos: the tokenizer's padding / sentence tokens (None when absent).
        other_specials: any further tokens that never reach text (added special tokens).
        lower_case: text is lower-cased before encoding (transformers' ``do_lower_case``);
            None: follow the case of the letters.
    """

    tokens: tuple[str, ...]
    word_delimiter: str = WORD_DELIMITER
    unk: str = UNK
    blank: Optional[str] = None
    pad: Optional[str] = None
    bos: Optional[str] = None
    eos: Optional[str] = None
    other_specials: tuple[str, ...] = ()
    lower_case: Optional[bool] = None
    _index: dict = field(init=False, repr=False, compare=False)
    _specials: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "other_specials", tuple(self.other_specials))
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
        explicit = self.blank is not None
        if self.blank is None:
            object.__setattr__(self, "blank", tokens[0])
        if self.blank not in index:
            raise VocabularyError(f"the blank token {self.blank!r} is not in the vocabulary")
        if self.blank == self.word_delimiter:
            raise VocabularyError(f"the word delimiter {self.word_delimiter!r} cannot be the blank")
        specials = {self.blank, self.unk, self.pad, self.bos, self.eos, *self.other_specials}
        if not explicit:
            specials |= set(DEFAULT_SPECIAL_NAMES)
        specials.discard(self.word_delimiter)
        object.__setattr__(self, "_specials", frozenset(t for t in specials if t in index))

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
        unk = next((u for u in (UNK, "[UNK]") if u in mapping), tokens[0])
        return cls(tuple(tokens), word_delimiter=delimiter, unk=unk)

    @classmethod
    def from_hf_tokenizer(cls, directory: str | Path, *, vocab_size: Optional[int] = None,
                          pad_token_id: Optional[int] = None, language: Optional[str] = None) -> "Vocabulary":
        """A transformers ``Wav2Vec2CTCTokenizer`` saved in ``directory``, as the model sees it.

        Reads ``vocab.json`` (flat, or nested per language as MMS saves it: ``language`` picks
        one), ``added_tokens.json`` and ``tokenizer_config.json``'s ``added_tokens_decoder``
        (tokens appended after the vocabulary, e.g. ``<s>``/``</s>``), and the token roles from
        ``tokenizer_config.json`` and ``special_tokens_map.json`` (transformers' defaults when
        absent). The blank is ``pad_token_id`` (the model's ``config.pad_token_id``) when given,
        else the pad token. ``vocab_size`` (the CTC head's outputs) cuts the tokens to the
        logits that exist (tokens beyond it can never be emitted); an index below it without a
        token is an error.
        """
        directory = Path(directory)
        mapping = _hf_vocab_mapping(directory / "vocab.json", language)
        config = _read_optional_json(directory / "tokenizer_config.json")
        special_map = _read_optional_json(directory / "special_tokens_map.json")
        marked_special: set[str] = set()
        for token, i in _read_optional_json(directory / "added_tokens.json").items():
            if isinstance(i, int):
                mapping.setdefault(token, i)
        decoder = config.get("added_tokens_decoder") or {}
        if isinstance(decoder, dict):
            for i, entry in decoder.items():
                if isinstance(entry, dict) and isinstance(entry.get("content"), str) and str(i).isdigit():
                    mapping.setdefault(entry["content"], int(i))
                    if entry.get("special"):
                        marked_special.add(entry["content"])
        by_index: dict[int, str] = {}
        for token, i in mapping.items():
            if i in by_index:
                raise VocabularyError(f"{directory}: tokens {by_index[i]!r} and {token!r} share index {i}")
            by_index[i] = token
        n = vocab_size if vocab_size is not None else max(by_index) + 1
        missing = [i for i in range(n) if i not in by_index]
        if missing:
            raise VocabularyError(
                f"{directory}: the tokenizer has {len([i for i in by_index if i < n])} of the {n} tokens the CTC "
                f"head's vocab_size={n} needs (no token for index {missing[0]}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + ")")
        tokens = [by_index[i] for i in range(n)]

        def role(name: str, default: Optional[str]) -> Optional[str]:
            value = config.get(name, special_map.get(name, default))
            if isinstance(value, dict):
                value = value.get("content")
            return value if isinstance(value, str) and value in tokens else None

        delimiter = role("word_delimiter_token", WORD_DELIMITER)
        if delimiter is None:
            delimiter = WORD_DELIMITER if WORD_DELIMITER in tokens else (" " if " " in tokens else WORD_DELIMITER)
        pad = role("pad_token", "<pad>")
        if pad_token_id is not None:
            if not 0 <= pad_token_id < n:
                raise VocabularyError(f"{directory}: pad_token_id {pad_token_id} is outside the {n} outputs")
            blank = tokens[pad_token_id]
        elif pad is not None:
            blank = pad
        else:
            raise VocabularyError(f"{directory}: no pad token to use as the CTC blank (set pad_token_id)")
        extra: list[str] = []
        for key in ("additional_special_tokens", "extra_special_tokens"):
            for value in (config.get(key) or special_map.get(key) or []):
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    extra.append(value)
        extra += sorted(marked_special)
        unk = role("unk_token", UNK)
        others = tuple(dict.fromkeys(t for t in extra if t in tokens and t != delimiter))
        lower = config.get("do_lower_case")
        return cls(tuple(tokens), word_delimiter=delimiter, unk=unk or UNK, blank=blank, pad=pad,
                   bos=role("bos_token", "<s>"), eos=role("eos_token", "</s>"),
                   other_specials=others,
                   lower_case=bool(lower) if lower is not None else None)

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
        return cls(tuple(tokens), blank="<pad>", bos="<s>", eos="</s>")

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
        return {"tokens": list(self.tokens), **self.special_tokens()}

    def special_tokens(self) -> dict[str, Any]:
        """The roles, as stored in checkpoints and in a model card's ``special_tokens``:
        ``{"blank": "[PAD]", "pad": ..., "unk": ..., "word_delimiter": "|", "bos": ...,
        "eos": ..., "other_specials": [...], "blank_id": 39, "specials": [...], "lower_case": ...}``
        (``blank_id`` and ``specials``, every token dropped from text, are for readers)."""
        d: dict[str, Any] = {role: getattr(self, role) for role in ROLES}
        d["other_specials"] = list(self.other_specials)
        d["lower_case"] = self.lower_case
        d["blank_id"] = self.blank_id
        d["specials"] = [t for t in self.tokens if t in self._specials]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(tuple(d["tokens"]), word_delimiter=d.get("word_delimiter", WORD_DELIMITER),
                   unk=d.get("unk", UNK), blank=d.get("blank"), pad=d.get("pad"), bos=d.get("bos"),
                   eos=d.get("eos"), other_specials=tuple(d.get("other_specials") or ()),
                   lower_case=d.get("lower_case"))

    def with_roles(self, roles: Optional[dict]) -> "Vocabulary":
        """This vocabulary's tokens with the roles of ``roles`` (a ``special_tokens()`` dict);
        unchanged when ``roles`` is empty (a model directory written before roles were recorded)."""
        if not roles:
            return self
        return Vocabulary.from_dict({**roles, "tokens": list(self.tokens)})

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
        return self._index[self.blank]  # type: ignore[index]

    @property
    def specials(self) -> frozenset:
        """Tokens that never reach text (blank, pad, unk, bos, eos, other specials)."""
        return self._specials

    def is_special(self, i: int) -> bool:
        return self.tokens[int(i)] in self._specials

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
        if self.lower_case:
            return text.lower()
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
            elif tok in self._specials:
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
            elif tok in self._specials:
                # pyctcdecode needs unique labels; a special never appears in text.
                labels.append(f"⁇{i}")
            else:
                labels.append(tok)
        return labels


def hf_vocab_languages(path: str | Path) -> list[str]:
    """The languages of a nested (per-language, MMS) ``vocab.json``; [] for a flat one."""
    mapping = _read_vocab_json(Path(path))
    return sorted(mapping) if _is_nested(mapping) else []


def _is_nested(mapping: dict) -> bool:
    return bool(mapping) and all(isinstance(v, dict) for v in mapping.values())


def _read_vocab_json(path: Path) -> dict:
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise VocabularyError(f"{path}: cannot read vocab.json: {e}") from e
    if not isinstance(mapping, dict):
        raise VocabularyError(f"{path}: expected a JSON object of token -> integer index")
    return mapping


def _hf_vocab_mapping(path: Path, language: Optional[str]) -> dict[str, int]:
    """``{token: index}`` of a flat vocab.json, or of one language of a nested one."""
    mapping = _read_vocab_json(path)
    if _is_nested(mapping):
        if language is None:
            if len(mapping) != 1:
                raise VocabularyError(f"{path}: holds one vocabulary per language; choose one with --language "
                                      f"(available: {', '.join(sorted(mapping))})")
            language = next(iter(mapping))
        if language not in mapping:
            raise VocabularyError(f"{path}: no vocabulary for language {language!r} "
                                  f"(available: {', '.join(sorted(mapping))})")
        mapping = mapping[language]
    if not all(isinstance(v, int) for v in mapping.values()):
        raise VocabularyError(f"{path}: expected a JSON object of token -> integer index")
    return dict(mapping)


def _read_optional_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise VocabularyError(f"{path}: cannot read: {e}") from e
    return value if isinstance(value, dict) else {}
