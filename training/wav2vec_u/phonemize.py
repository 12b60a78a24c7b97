"""Phonemized text for wav2vec-U: espeak-ng's ASCII phoneme mnemonics, folded to a small inventory.

fairseq's ``prepare_text.sh`` phonemizes a word list with espeak(-ng) through the ``phonemize``
package, keeps the phones seen at least ``min_phones`` times and drops the sentences with any
other (``filter_lexicon.py``), then optionally inserts ``<SIL>`` between words
(``phonemize_with_sil.py``). Here the sentences themselves go through ``espeak-ng -q -x
--sep='|'`` (the synthetic corpus is espeak-ng's own speech, so sentence-level phonemes,
including its clause pauses, are what the audio says), and each mnemonic is folded:

* stress marks (``'`` primary, ``,`` secondary, ``%``, ``=``) and the length mark ``:`` are dropped;
* espeak's variant suffixes ``2`` ``#`` ``-`` are dropped (``@2`` -> ``@``, ``t#`` -> ``t``, ``r-`` -> ``r``);
* a few phones are folded by hand (:data:`EXPLICIT_FOLDS`: ``a#`` (the reduced article "a") -> ``@``,
  ``aa`` -> ``a``, ``i@3`` -> ``i@``, ``?`` -> ``t``, ``x`` -> ``k``, ...);
* pauses (``_:``, ``_!``, ``_``) become the silence token ``<SIL>`` (one per run), or are dropped;
* ``;`` (palatalization of the previous phone) is dropped.

What espeak-ng 1.51 prints, for the record (tests assert it)::

    $ espeak-ng -q -x --sep='|' -v en-us "hello world"
    h|@|l|'oU w|'3:|l|d                 -> h @ l oU w 3 l d
    $ espeak-ng -q -x --sep='|' -v en-us "the cat sat on the mat"
    D|@2 k|'a|t s|'a|t O2|n|D|@2 m|'a|t  -> D @ k a t s a t O n D @ m a t

The whole table (every raw mnemonic seen -> its folded phone, or null when dropped), the
inventory and the counts are written as ``phones.json`` (:class:`PhoneSet`).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

SIL = "<SIL>"
SEPARATOR = "|"
STRESS_MARKS = "',%="
VARIANT_SUFFIXES = "2#-"
# Folded by hand after stress marks are dropped (checked first, then again after the suffix rules).
EXPLICIT_FOLDS = {
    "a#": "@",     # the reduced vowel of the article "a", "about": a schwa, not the TRAP vowel
    "aa": "a",     # en-us BATH vowel ("ask") -> TRAP
    "a:": "a",
    "i@3": "i@",   # rhotic NEAR ("ear")
    "aI3": "aI",   # "fire": aI3 r-
    "aI@": "aI",
    "aU@": "aU",
    "?": "t",      # glottal stop (a t)
    "x": "k",      # loch
    "@L": "@L",    # syllabic l stays one phone
}


class PhonemizeError(RuntimeError):
    """espeak-ng missing or failing, or no usable text."""


def espeak_version() -> str:
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        raise PhonemizeError("espeak-ng is not installed (apt-get install espeak-ng)") from None
    return " ".join(out.split()[:4])


def _espeak(lines: Sequence[str], voice: str) -> list[str]:
    if shutil.which("espeak-ng") is None:
        raise PhonemizeError("espeak-ng is not installed (apt-get install espeak-ng)")
    # Piped standard input is read line by line: one output line per input line.
    text = "".join(" ".join(s.split()) + "\n" for s in lines)
    try:
        res = subprocess.run(["espeak-ng", "-q", "-x", f"--sep={SEPARATOR}", "-v", voice],
                             input=text, capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as e:
        raise PhonemizeError(f"espeak-ng failed for voice {voice}: {e.stderr.strip()[-300:]}") from e
    return res.stdout.splitlines()


def espeak_mnemonics(sentences: Sequence[str], voice: str = "en-us", batch: int = 2000) -> list[list[str]]:
    """The raw espeak-ng mnemonics of each sentence (stress and length marks still on):
    ``"hello world"`` -> ``["h", "@", "l", "'oU", "w", "'3:", "l", "d"]``. Word boundaries are not
    kept (espeak joins some words itself: "on the" -> ``O2|n|D|@2``). Sentences go through one
    espeak-ng process per ``batch``; a batch whose output does not come back one line per
    sentence is redone one sentence at a time."""
    out: list[list[str]] = []
    for start in range(0, len(sentences), batch):
        chunk = list(sentences[start:start + batch])
        lines = _espeak(chunk, voice)
        if len(lines) != len(chunk):
            lines = [" ".join(_espeak([s], voice)) for s in chunk]
        out.extend([tok for word in line.split() for tok in word.split(SEPARATOR) if tok] for line in lines)
    return out


def fold_mnemonic(raw: str, keep_pauses: bool = True) -> Optional[str]:
    """One espeak-ng mnemonic -> the reduced phone (None: dropped). See the module docstring."""
    if not raw or raw == ";":
        return None
    if raw.startswith("_"):
        return SIL if keep_pauses else None
    s = raw.replace(";", "")
    s = "".join(c for c in s if c not in STRESS_MARKS)
    if s in EXPLICIT_FOLDS:
        return EXPLICIT_FOLDS[s]
    s = s.replace(":", "")
    while len(s) > 1 and s[-1] in VARIANT_SUFFIXES:
        s = s[:-1]
    s = EXPLICIT_FOLDS.get(s, s)
    return s or None


def fold_sequence(raw: Iterable[str], table: dict[str, Optional[str]], keep_pauses: bool = True) -> list[str]:
    """Raw mnemonics -> folded phones; runs of silence become one ``<SIL>``; no leading/trailing
    silence. ``table`` caches the folds (and records every mnemonic seen)."""
    out: list[str] = []
    for tok in raw:
        if tok not in table:
            table[tok] = fold_mnemonic(tok, keep_pauses)
        p = table[tok]
        if p is None or (p == SIL and (not out or out[-1] == SIL)):
            continue
        out.append(p)
    while out and out[-1] == SIL:
        out.pop()
    return out


@dataclass
class PhoneSet:
    """The phone inventory and how it was made (``phones.json``)."""

    phones: list[str]                              # the GAN's output units, most frequent first
    table: dict[str, Optional[str]]                # raw espeak-ng mnemonic -> folded phone / None
    counts: dict[str, int] = field(default_factory=dict)   # folded phone counts in the unpaired text
    dropped: dict[str, int] = field(default_factory=dict)  # rare phones (and their counts) left out
    voice: str = "en-us"
    min_count: int = 0
    keep_pauses: bool = True
    espeak: str = ""

    @property
    def silence(self) -> Optional[int]:
        return self.phones.index(SIL) if SIL in self.phones else None

    def index(self, phones: Sequence[str]) -> Optional[list[int]]:
        """Phone ids, or None when a phone is outside the inventory (a sentence to drop)."""
        ids = {p: i for i, p in enumerate(self.phones)}
        try:
            return [ids[p] for p in phones]
        except KeyError:
            return None

    def fold(self, raw: Sequence[str]) -> list[str]:
        return fold_sequence(raw, self.table, self.keep_pauses)

    def to_dict(self) -> dict:
        return {"phones": self.phones, "silence": SIL if SIL in self.phones else None, "voice": self.voice,
                "espeak_ng": self.espeak, "min_count": self.min_count, "keep_pauses": self.keep_pauses,
                "rules": ["stress marks ' , % = dropped", "length mark : dropped",
                          "variant suffixes 2 # - dropped", f"explicit folds {EXPLICIT_FOLDS}",
                          "pauses _: _! _ -> <SIL> (one per run, none at the ends)" if self.keep_pauses
                          else "pauses dropped", "; (palatalization) dropped",
                          f"phones seen fewer than {self.min_count} times in the text: sentences dropped"],
                "table": dict(sorted(self.table.items())), "counts": self.counts, "dropped": self.dropped}

    @classmethod
    def from_dict(cls, d: dict) -> "PhoneSet":
        return cls(list(d["phones"]), dict(d["table"]), dict(d.get("counts", {})), dict(d.get("dropped", {})),
                   d.get("voice", "en-us"), int(d.get("min_count", 0)), bool(d.get("keep_pauses", True)),
                   d.get("espeak_ng", ""))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "PhoneSet":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def build_phone_set(sequences: Sequence[Sequence[str]], table: dict[str, Optional[str]], min_count: int,
                    voice: str = "en-us", keep_pauses: bool = True) -> PhoneSet:
    """The inventory of folded ``sequences``: phones seen at least ``min_count`` times, most
    frequent first (ties by name); ``<SIL>`` is kept whatever its count when present."""
    counts = Counter(p for seq in sequences for p in seq)
    keep = sorted((p for p, c in counts.items() if c >= min_count or p == SIL), key=lambda p: (-counts[p], p))
    dropped = {p: c for p, c in counts.items() if p not in keep}
    return PhoneSet(keep, dict(table), {p: counts[p] for p in keep}, dropped, voice, min_count, keep_pauses,
                    espeak_version())


# ---------------------------------------------------------------------------- unpaired text
def corpus_sentences(corpus: Path) -> set[str]:
    """Every transcript of a corpus folder (all ``*.wrd`` files and the ``text`` of ``*.jsonl``
    manifests), lower-cased: the sentences the unpaired text must not contain."""
    seen: set[str] = set()
    for wrd in corpus.glob("*.wrd"):
        seen.update(" ".join(line.lower().split()) for line in wrd.read_text(encoding="utf-8").splitlines())
    for jl in corpus.glob("*.jsonl"):
        for line in jl.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("{"):
                text = json.loads(line).get("text")
                if isinstance(text, str):
                    seen.add(" ".join(text.lower().split()))
    seen.discard("")
    return seen


def unpaired_sentences(exclude: set[str], sources: Sequence[str] = ("fortunes", "wordnet"),
                       text_files: Sequence[Path] = (), max_sentences: int = 0, seed: int = 0) -> list[str]:
    """Sentences for the GAN's text side, none of them in ``exclude`` (the audio's transcripts):
    the synthetic corpus's own sentence sources (training.synth: Debian's fortunes, WordNet's
    examples) or text files, normalized the same way, shuffled with ``seed``, at most
    ``max_sentences`` (0: all)."""
    from training.synth import collect_sentences

    pool = [s for s in collect_sentences(list(text_files), list(sources)) if s not in exclude]
    random.Random(seed).shuffle(pool)
    if not pool:
        raise PhonemizeError("no sentences left for the unpaired text once the corpus's transcripts are excluded")
    return pool[:max_sentences] if max_sentences > 0 else pool


_WS = re.compile(r"\s+")


def phone_line(phones: Sequence[str]) -> str:
    return " ".join(phones)


def read_phone_lines(path: Path) -> list[list[str]]:
    return [_WS.split(line.strip()) if line.strip() else [] for line in path.read_text(encoding="utf-8").splitlines()]
