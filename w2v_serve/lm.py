"""n-gram language models for beam search: ``w2v lm build TEXT... --order N --out FILE``.

The model is estimated by IRSTLM (Debian's ``irstlm``: ``add-start-end.sh``, ``build-lm.sh``,
``compile-lm``), a real LM toolkit with proper smoothing, and written as ARPA, which KenLM (and
so pyctcdecode) loads. Beside it goes the unigram list (one word per line) that pyctcdecode
needs to tell known words from unknown ones: ``lm.arpa`` -> ``lm.unigrams.txt``.

Text is normalised the way transcripts look: one sentence per line, words of letters, digits
and apostrophes, case-folded to the model's vocabulary (``--model DIR``) or lower case.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Optional

IRSTLM_HOMES = ("/usr/lib/irstlm", "/usr/local/lib/irstlm", "/usr/local")
# IRSTLM's names; "auto": improved shift-beta (modified Kneser-Ney), Witten-Bell where that cannot be estimated.
SMOOTHING = ("auto", "improved-shift-beta", "shift-beta", "witten-bell")
DEFAULT_LEXICON_LOGPROB = -6.5
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


class LMBuildError(RuntimeError):
    """The LM toolkit is missing or failed; the message says which step and why."""


def unigrams_path_for(lm_path: str | Path) -> Path:
    """Where the unigram list of an LM file lives: ``lm.arpa`` / ``lm.bin`` -> ``lm.unigrams.txt``."""
    lm_path = Path(lm_path)
    name = lm_path.name
    for suffix in (".arpa.gz", ".arpa", ".binary", ".bin", ".klm"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return lm_path.with_name(name + ".unigrams.txt")


def read_unigrams(path: str | Path) -> set[str]:
    """Words of a unigram list (one per line) or of an ARPA file's \\1-grams section."""
    path = Path(path)
    words: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
        if not first.strip().startswith("\\data\\") and first.strip() != "":
            words.add(first.strip())
            words.update(line.strip() for line in f if line.strip())
            return words
        in_unigrams = False
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
            elif line.startswith("\\"):
                if in_unigrams:
                    break
            elif in_unigrams and line:
                parts = line.split()
                if len(parts) >= 2:
                    words.add(parts[1])
    words -= {"<s>", "</s>", "<unk>"}
    if not words:
        raise LMBuildError(f"{path}: holds no words")
    return words


def normalize_sentences(lines: Iterable[str], case: str = "lower") -> Iterable[str]:
    """Transcript-like sentences: words only, case-folded; empty lines dropped."""
    for line in lines:
        words = _WORD.findall(line)
        if not words:
            continue
        text = " ".join(words)
        yield text.upper() if case == "upper" else text.lower() if case == "lower" else text


def find_irstlm() -> Path:
    """IRSTLM's home (its ``bin`` holds build-lm.sh and compile-lm)."""
    candidates = [os.environ["IRSTLM"]] if os.environ.get("IRSTLM") else []
    candidates += list(IRSTLM_HOMES)
    for home in candidates:
        if (Path(home) / "bin" / "build-lm.sh").exists() and (Path(home) / "bin" / "compile-lm").exists():
            return Path(home)
    found = shutil.which("build-lm.sh")
    if found and shutil.which("compile-lm"):
        return Path(found).resolve().parent.parent
    raise LMBuildError("IRSTLM is not installed (build-lm.sh, compile-lm); on Debian/Ubuntu: apt-get install irstlm")


def build_lm(texts: Iterable[str | Path], out: str | Path, *, order: int = 3, case: str = "lower",
             smoothing: str = SMOOTHING[0], lexicon: Optional[str | Path] = None,
             lexicon_logprob: float = DEFAULT_LEXICON_LOGPROB) -> tuple[Path, Path, str]:
    """Estimate an ``order``-gram LM from text files; returns (ARPA path, unigram list path,
    smoothing used). Words of ``lexicon`` (one per line) that the text lacks become unigrams of
    log10 probability ``lexicon_logprob``: beam search can then spell them, well below any word
    seen in the text."""
    if order < 1:
        raise LMBuildError(f"order must be at least 1, got {order}")
    if smoothing not in SMOOTHING:
        raise LMBuildError(f"unknown smoothing {smoothing!r}; choose one of {', '.join(SMOOTHING)}")
    out = Path(out)
    extra_words = read_lexicon(lexicon, case) if lexicon is not None else set()  # fail before the toolkit runs
    home = find_irstlm()
    env = dict(os.environ, IRSTLM=str(home), PATH=f"{home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    with tempfile.TemporaryDirectory(prefix="w2v-lm-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        vocabulary: set[str] = set()
        n_sentences = 0
        with open(corpus, "w", encoding="utf-8") as f:
            for text in texts:
                path = Path(text)
                try:
                    with open(path, encoding="utf-8", errors="replace") as src:
                        for sentence in normalize_sentences(src, case):
                            f.write(sentence + "\n")
                            vocabulary.update(sentence.split())
                            n_sentences += 1
                except OSError as e:
                    raise LMBuildError(f"{path}: cannot read text ({e.strerror})") from e
        if n_sentences == 0:
            raise LMBuildError("the text files hold no words")
        marked = tmp / "corpus.se.txt"
        with open(corpus, "rb") as src, open(marked, "wb") as dst:
            _run([str(home / "bin" / "add-start-end.sh")], env, "add-start-end.sh", stdin=src, stdout=dst)
        used = _estimate(home, env, marked, tmp, order, smoothing)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".tmp")
        _run([str(home / "bin" / "compile-lm"), str(tmp / "lm.gz"), "--text=yes", str(partial)], env, "compile-lm")
        if extra_words:
            vocabulary |= add_lexicon_unigrams(partial, extra_words, lexicon_logprob)
        partial.replace(out)
    unigrams = unigrams_path_for(out)
    unigrams.write_text("".join(w + "\n" for w in sorted(vocabulary)), encoding="utf-8")
    return out, unigrams, used


def read_lexicon(path: str | Path, case: str = "lower") -> set[str]:
    """Single words, one per line (a word list such as /usr/share/dict/words), case-folded;
    lines that are not one word (letters, inner apostrophes) are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise LMBuildError(f"{path}: cannot read the lexicon ({e.strerror})") from e
    words = {w for w in normalize_sentences(lines, case) if " " not in w}
    if not words:
        raise LMBuildError(f"{path}: the lexicon holds no words")
    return words


def add_lexicon_unigrams(arpa: Path, words: set[str], logprob: float) -> set[str]:
    """Add the words the ARPA file lacks as unigrams (backoff 0); returns those added.

    The LM is not renormalized: beam search compares scores and needs none, and the added mass
    (one word-list's worth at ~1e-6.5 each) is a few percent at most."""
    lines = arpa.read_text(encoding="utf-8").split("\n")
    start = lines.index("\\1-grams:") + 1
    end = start
    while end < len(lines) and lines[end].strip():
        end += 1
    known = {line.split()[1] for line in lines[start:end] if len(line.split()) >= 2}
    added = sorted(words - known)
    lines[end:end] = [f"{logprob:.4f}\t{w}\t0" for w in added]
    for k in range(start):
        key, _, count = lines[k].partition("=")
        if key.replace(" ", "") == "ngram1":
            lines[k] = f"ngram 1={int(count) + len(added)}"
    arpa.write_text("\n".join(lines), encoding="utf-8")
    return set(added)


def _estimate(home: Path, env: dict, corpus: Path, tmp: Path, order: int, smoothing: str) -> str:
    """Run build-lm.sh into ``tmp/lm.gz``; returns the smoothing used.

    The shift-beta (Kneser-Ney) discounts are estimated from counts-of-counts; on tiny or
    repetitive text some are zero and IRSTLM's estimator divides by zero (while still exiting 0).
    "auto" then falls back to Witten-Bell, which needs no such statistics.
    """
    tries = ["improved-shift-beta", "witten-bell"] if smoothing == "auto" else [smoothing]
    for method in tries:
        log = tmp / f"build-{method}.log"
        lm = tmp / "lm.gz"
        lm.unlink(missing_ok=True)
        # -k 1: one part (the corpus fits in memory); -t: IRSTLM's scratch inside our temp dir.
        _run([str(home / "bin" / "build-lm.sh"), "-i", str(corpus), "-n", str(order), "-o", str(lm),
              "-k", "1", "-s", method, "-t", str(tmp / "stat"), "-l", str(log)], env, "build-lm.sh", log=log)
        text = log.read_text(errors="replace") if log.exists() else ""
        if lm.exists() and "division by zero" not in text and "cannot find sublm" not in text:
            return method
    raise LMBuildError(f"build-lm.sh ({method}) produced no model:\n{text[-2000:]}")


def _run(cmd: list[str], env: dict, step: str, *, stdin=None, stdout=None, log: Optional[Path] = None) -> None:
    proc = subprocess.run(cmd, env=env, stdin=stdin if stdin is not None else subprocess.DEVNULL, stdout=stdout if stdout is not None else subprocess.PIPE,
                          stderr=subprocess.PIPE)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip()
        if log is not None and log.exists():
            detail += "\n" + log.read_text(errors="replace")[-2000:]
        raise LMBuildError(f"{step} failed (exit {proc.returncode}): {detail[-2000:]}")
