"""Data manifests: fairseq's ``.tsv`` (+ ``.ltr`` / ``.wrd`` transcripts) and JSON lines.

fairseq layout (``wav2vec_manifest.py`` / ``libri_labels.py``)::

    train.tsv   first line: root folder; then ``relative/path.flac<TAB>num_samples`` per utterance
    train.wrd   one transcript per line, words:   ``HELLO WORLD``
    train.ltr   the same as letters, ``|`` between words: ``H E L L O | W O R L D |``

JSON lines: one object per utterance, ``{"path": ..., "text": ..., "num_samples": ...}``; a
relative path is relative to the manifest's folder; ``text`` and ``num_samples`` are optional
(``num_samples`` is then read from the file header).

``num_samples`` counts samples at 16 kHz (after resampling), which is what batching needs.
No torch here: ``w2v data manifest`` runs on a machine without the training extras.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from w2v_serve.audio import SAMPLE_RATE, AudioError, probe

log = logging.getLogger("w2v.data")

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3", "opus", "aiff", "aif")


class ManifestError(ValueError):
    """A manifest that cannot be read (missing, malformed, transcripts that do not line up)."""


@dataclass(frozen=True)
class Utterance:
    path: Path
    num_samples: int                 # at 16 kHz
    text: Optional[str] = None       # words separated by spaces (None: unlabeled)


def ltr_to_words(line: str) -> str:
    """``H E L L O | W O R L D |`` -> ``HELLO WORLD``."""
    return " ".join("".join(line.split()).replace("|", " ").split())


def words_to_ltr(text: str) -> str:
    """``HELLO WORLD`` -> ``H E L L O | W O R L D |`` (fairseq's libri_labels.py)."""
    return " ".join(" ".join(word) + " |" for word in text.split())


def samples_at_16k(path: Path) -> int:
    info = probe(path)
    return int(round(info.frames * SAMPLE_RATE / info.sample_rate)) if info.sample_rate else 0


def read_manifest(path: str | Path, labels: Optional[str] = "ltr") -> list[Utterance]:
    """Read a ``.tsv`` (with its ``.<labels>`` transcripts when present) or ``.jsonl`` manifest."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such manifest")
    if path.suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ManifestError(f"{path}: empty manifest (the first line must be the root folder)")
    root = Path(lines[0].strip())
    if not root.is_absolute():
        root = path.parent / root
    rows = [ln for ln in lines[1:] if ln.strip()]
    texts: list[Optional[str]] = [None] * len(rows)
    label_file = path.with_suffix(f".{labels}") if labels else None
    if label_file is not None and label_file.exists():
        label_lines = label_file.read_text(encoding="utf-8").splitlines()
        if len(label_lines) != len(rows):
            raise ManifestError(f"{label_file}: {len(label_lines)} transcripts for {len(rows)} utterances in {path}")
        texts = [ltr_to_words(t) if labels == "ltr" else " ".join(t.split()) for t in label_lines]
    out = []
    for i, (row, text) in enumerate(zip(rows, texts)):
        parts = row.split("\t")
        if len(parts) < 2:
            raise ManifestError(f"{path}:{i + 2}: expected 'relative_path<TAB>num_samples', got {row!r}")
        try:
            n = int(parts[1])
        except ValueError:
            raise ManifestError(f"{path}:{i + 2}: sample count {parts[1]!r} is not an integer") from None
        out.append(Utterance(root / parts[0], n, text))
    return out


def _read_jsonl(path: Path) -> list[Utterance]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            audio = Path(obj["path"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ManifestError(f"{path}:{i + 1}: expected a JSON object with 'path' ({e})") from e
        if not audio.is_absolute():
            audio = path.parent / audio
        n = obj.get("num_samples")
        if n is None:
            try:
                n = samples_at_16k(audio)
            except AudioError as e:
                log.warning("skipping %s", e)
                continue
        text = obj.get("text")
        out.append(Utterance(audio, int(n), " ".join(text.split()) if isinstance(text, str) else None))
    return out


# ---------------------------------------------------------------------------- writing
def find_audio(source: Path, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Audio files under a folder (recursive, sorted) or listed in a text file (one per line)."""
    exts = {e.lower().lstrip(".") for e in extensions}
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in exts)
    if source.is_file():
        base = source.parent
        paths = []
        for line in source.read_text(encoding="utf-8").splitlines():
            if line.strip():
                p = Path(line.strip())
                paths.append(p if p.is_absolute() else base / p)
        return paths
    raise ManifestError(f"{source}: no such folder or list file")


def read_transcripts(path: Path) -> dict[str, str]:
    """``id<TAB>text`` lines, or JSON lines with ``path``/``id`` and ``text``; keys are file stems
    (and full paths) so either form matches."""
    table: dict[str, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            obj = json.loads(line)
            key, text = str(obj.get("path") or obj.get("id")), obj.get("text", "")
        else:
            key, sep, text = line.partition("\t")
            if not sep:
                key, _, text = line.partition(" ")
        table[key.strip()] = " ".join(text.split())
        table.setdefault(Path(key.strip()).stem, " ".join(text.split()))
    return table


def write_manifests(source: Path, out_dir: Path, fmt: str = "tsv", valid_percent: float = 0.0,
                    seed: int = 42, extensions: Iterable[str] = AUDIO_EXTENSIONS,
                    transcripts: Optional[Path] = None, name: str = "train") -> dict:
    """Scan ``source``, probe every file (corrupt ones are reported and skipped), split off a
    validation share, write ``<name>``/``valid`` manifests. Returns a summary dict."""
    files = find_audio(source, extensions)
    table = read_transcripts(transcripts) if transcripts else {}
    good: list[Utterance] = []
    failed: list[tuple[str, str]] = []
    for f in files:
        try:
            n = samples_at_16k(f)
            if n <= 0:
                raise AudioError(f"{f}: contains no samples")
        except AudioError as e:
            failed.append((str(f), str(e)))
            continue
        text = table.get(str(f)) or table.get(f.stem)
        sidecar = f.with_suffix(".txt")
        if text is None and sidecar.exists():
            text = " ".join(sidecar.read_text(encoding="utf-8").split())
        good.append(Utterance(f, n, text))
    rng = random.Random(seed)
    valid_idx = set(rng.sample(range(len(good)), int(round(len(good) * valid_percent)))) if good else set()
    splits = {name: [u for i, u in enumerate(good) if i not in valid_idx],
              "valid": [u for i, u in enumerate(good) if i in valid_idx]}
    out_dir.mkdir(parents=True, exist_ok=True)
    root = source.resolve() if source.is_dir() else None
    written = []
    for split, utts in splits.items():
        if not utts and split == "valid":
            continue
        written += write_split(out_dir, split, utts, fmt, root)
    return {"files": len(files), "utterances": len(good), "failed": failed, "written": written,
            "hours": sum(u.num_samples for u in good) / SAMPLE_RATE / 3600}


def write_split(out_dir: Path, split: str, utts: list[Utterance], fmt: str, root: Optional[Path]) -> list[str]:
    labeled = bool(utts) and all(u.text is not None for u in utts)
    if fmt == "jsonl":
        p = out_dir / f"{split}.jsonl"
        with open(p, "w", encoding="utf-8") as f:
            for u in utts:
                obj = {"path": str(u.path.resolve()), "num_samples": u.num_samples}
                if u.text is not None:
                    obj["text"] = u.text
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        return [str(p)]
    if root is None:  # a list of files: the common folder is the root
        import os

        root = Path(os.path.commonpath([str(u.path.resolve().parent) for u in utts])) if utts else Path("/")
    tsv = out_dir / f"{split}.tsv"
    with open(tsv, "w", encoding="utf-8") as f:
        f.write(f"{root}\n")
        for u in utts:
            f.write(f"{u.path.resolve().relative_to(root)}\t{u.num_samples}\n")
    written = [str(tsv)]
    if labeled:
        (out_dir / f"{split}.wrd").write_text("".join(f"{u.text}\n" for u in utts), encoding="utf-8")
        (out_dir / f"{split}.ltr").write_text("".join(f"{words_to_ltr(u.text or '')}\n" for u in utts), encoding="utf-8")
        written += [str(out_dir / f"{split}.wrd"), str(out_dir / f"{split}.ltr")]
    return written


def cmd_manifest(args) -> int:
    summary = write_manifests(Path(args.source), Path(args.out), args.format, args.valid_percent, args.seed,
                              args.ext.split(","), Path(args.transcripts) if args.transcripts else None,
                              args.name)
    for path, err in summary["failed"]:
        print(f"skipped {err}", file=sys.stderr)
    print(f"{summary['utterances']} utterances ({summary['hours']:.2f} h) of {summary['files']} files; "
          f"{len(summary['failed'])} skipped; wrote {', '.join(summary['written'])}")
    return 1 if summary["utterances"] == 0 else 0


# ---------------------------------------------------------------------------- subsets
def labeled_subset(utts: list[Utterance], hours: float, seed: int = 0) -> list[Utterance]:
    """The first utterances of a seeded shuffle of ``utts`` until ``hours`` of audio (the
    low-resource splits of the paper's table: a smaller subset is a prefix of a larger one with
    the same seed, so 10 min ⊂ 1 h ⊂ 10 h)."""
    if hours <= 0:
        raise ManifestError(f"a subset needs a positive duration, got {hours} h")
    order = list(utts)
    random.Random(seed).shuffle(order)
    target = hours * 3600 * SAMPLE_RATE
    out, total = [], 0
    for u in order:
        if total >= target:
            break
        out.append(u)
        total += u.num_samples
    return out


def cmd_subset(args) -> int:
    utts = read_manifest(args.manifest)
    subset = labeled_subset(utts, args.hours, args.seed)
    hours = sum(u.num_samples for u in subset) / SAMPLE_RATE / 3600
    if hours < args.hours * 0.999:
        print(f"{args.manifest} holds only {hours:.3f} h; the subset is all of it", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = Path(args.manifest)
    root = Path(src.read_text(encoding="utf-8").splitlines()[0].strip()) if src.suffix == ".tsv" else None
    if root is not None and not root.is_absolute():
        root = (src.parent / root).resolve()
    written = write_split(out.parent, out.name, subset, "jsonl" if src.suffix != ".tsv" else "tsv", root)
    print(f"{len(subset)} utterances ({hours:.3f} h) of {len(utts)}; wrote {', '.join(written)}")
    return 0
