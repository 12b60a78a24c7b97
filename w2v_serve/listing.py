"""Input listings for batch transcription, read as streams (millions of lines, constant memory).

Three kinds, told apart by the file name:

- ``*.tsv``: a fairseq manifest: the first line is the root folder (relative to the manifest's
  folder when not absolute), then ``relative_path<TAB>num_samples`` per line;
- ``*.jsonl`` / ``*.json``: a JSON-lines manifest (``w2v data manifest --format jsonl``): one
  object per line with ``path`` (relative to the manifest's folder when not absolute);
- anything else (and ``-``, standard input): one path per line, as given (relative to the
  current folder, like command-line arguments).

Blank lines are skipped. A malformed line raises ``ListingError`` naming the file and line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterator

MANIFEST_SUFFIXES = (".tsv", ".jsonl", ".json")


class ListingError(ValueError):
    """A listing that cannot be read; the message names the file, the line and the reason."""


def is_manifest(path: str) -> bool:
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES


def iter_listing(path: str) -> Iterator[str]:
    """The audio paths a listing names, in order, one line at a time."""
    if path == "-":
        yield from _plain(sys.stdin, "<stdin>")
        return
    suffix = Path(path).suffix.lower()
    try:
        f = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise ListingError(f"{path}: cannot read the listing ({e.strerror or e})") from e
    with f:
        if suffix == ".tsv":
            yield from _fairseq(f, path)
        elif suffix in (".jsonl", ".json"):
            yield from _jsonl(f, path)
        else:
            yield from _plain(f, path)


def _plain(lines, name: str) -> Iterator[str]:
    for line in lines:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def _fairseq(lines, name: str) -> Iterator[str]:
    root_line = next(lines, "").strip()
    if not root_line:
        raise ListingError(f"{name}: empty manifest (the first line must be the root folder)")
    root = root_line if os.path.isabs(root_line) else os.path.join(os.path.dirname(name), root_line)
    for n, line in enumerate(lines, 2):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        rel = line.split("\t", 1)[0]
        if "\t" not in line or not rel:
            raise ListingError(f"{name}:{n}: expected 'relative_path<TAB>num_samples', got {line[:200]!r}")
        yield os.path.join(root, rel)


def _jsonl(lines, name: str) -> Iterator[str]:
    folder = os.path.dirname(name)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            audio = json.loads(line)["path"]
            if not isinstance(audio, str):
                raise TypeError("'path' is not a string")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ListingError(f"{name}:{n}: expected a JSON object with a string 'path' ({e})") from None
        yield audio if os.path.isabs(audio) else os.path.join(folder, audio)
