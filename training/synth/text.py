"""Sentences to speak: Debian's ``fortunes`` collections, WordNet's example sentences, or text
files; normalized to 4-14 plain lower-case words."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from training.synth.errors import SynthError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# The collections of Debian's `fortunes` and `fortunes-min` packages. Pinned: another fortunes
# package installed later (fortune-anarchism, ...) must not change the corpus of the same command.
FORTUNE_FILES = (
    "art", "ascii-art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs",
    "education", "ethnic", "food", "fortunes", "goedel", "humorists", "kids", "knghtbrd", "law", "linux",
    "linuxcookie", "literature", "love", "magic", "medicine", "men-women", "miscellaneous", "news",
    "paradoxum", "people", "perl", "pets", "platitudes", "politics", "pratchett", "riddles", "science",
    "songs-poems", "sports", "startrek", "tao", "translate-me", "wisdom", "work", "zippy")
WORDNET_DIR = Path("/usr/share/wordnet")
TEXT_SOURCES = ("fortunes", "wordnet")
MIN_WORDS, MAX_WORDS = 4, 14
_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)?$")


def normalize_sentence(text: str) -> Optional[str]:
    """Lower-case words of letters (and inner apostrophes); None if anything else remains
    (digits, symbols, abbreviations) or the length is outside 4-14 words."""
    text = text.replace("’", "'").replace("`", "'")
    text = re.sub(r"[\"“”()\[\]]", " ", text)
    text = re.sub(r"[,;:.!?]+(\s|$)", " ", text)
    text = re.sub(r"\s+-+\s+|--", " ", text)
    words = text.lower().split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if not all(_WORD.match(w) for w in words):
        return None
    return " ".join(words)


def split_sentences(block: str) -> Iterator[str]:
    block = " ".join(block.split())
    for part in re.split(r"(?<=[.!?])\s+", block):
        yield part


def fortune_blocks(directory: Path = FORTUNES_DIR) -> Iterator[str]:
    """The quotations of Debian's fortunes collections (not the .dat indexes, not the offensive set)."""
    files = [directory / name for name in FORTUNE_FILES if (directory / name).is_file()]
    if not files:
        raise SynthError(f"{directory}: Debian's fortunes are not installed (apt-get install fortunes)")
    for f in files:
        text = f.read_text(encoding="utf-8", errors="ignore")
        yield from text.split("\n%\n")


def wordnet_examples(directory: Path = WORDNET_DIR) -> Iterator[str]:
    """WordNet 3.0's example sentences (the quoted parts of the glosses in Debian's wordnet-base),
    e.g. "the teacher should not deprecate his student's efforts"."""
    files = [directory / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.is_file() for f in files):
        raise SynthError(f"{directory}: WordNet is not installed (apt-get install wordnet-base)")
    for f in files:
        with open(f, encoding="utf-8", errors="ignore") as fh:
            for line in fh:
                if line.startswith(" ") or " | " not in line:
                    continue
                yield from re.findall(r'"([^"]+)"', line.split(" | ", 1)[1])


def collect_sentences(sources: Sequence[Path] = (), builtin: Sequence[str] = ("fortunes",)) -> list[str]:
    """Distinct normalized sentences, in a stable order: from text files if given, else from the
    built-in sources (``fortunes``, ``wordnet``)."""
    blocks: Iterable[str]
    if sources:
        blocks = (p.read_text(encoding="utf-8", errors="ignore") for p in sources)
    else:
        unknown = set(builtin) - set(TEXT_SOURCES)
        if unknown or not builtin:
            raise SynthError(f"text sources are {', '.join(TEXT_SOURCES)}; got {', '.join(builtin) or 'none'}")
        blocks = (b for name in sorted(set(builtin))
                  for b in (fortune_blocks() if name == "fortunes" else wordnet_examples()))
    seen: dict[str, None] = {}
    for block in blocks:
        for lines in (block.split("\n\n") if sources else [block]):
            for s in split_sentences(lines):
                n = normalize_sentence(s)
                if n:
                    seen.setdefault(n, None)
    return sorted(seen)
