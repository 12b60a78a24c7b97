"""Helpers for the runtime tests: hand-made CTC log-probabilities, espeak-ng speech, a reference
greedy decode written independently of w2v_serve.decoding."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import numpy as np

from w2v_serve.vocab import Vocabulary

VOCAB = Vocabulary.from_characters("abcdefghijklmnopqrstuvwxyz'")
FRAME_S = 0.02


def peaky(frames: list, vocab: Vocabulary = VOCAB, p: float = 0.95) -> np.ndarray:
    """Log-probs with most mass on one token per frame.

    ``frames`` items: a character, "_" for blank, "|" for the delimiter, or a dict
    {token: probability} for an ambiguous frame (the rest of the mass spread evenly).
    """
    V = len(vocab)
    out = np.empty((len(frames), V), dtype=np.float32)
    for t, f in enumerate(frames):
        want = f if isinstance(f, dict) else {f: p}
        row = np.full(V, (1.0 - sum(want.values())) / (V - len(want)), dtype=np.float64)
        for tok, q in want.items():
            row[token_id(tok, vocab)] = q
        out[t] = np.log(row)
    return out


def token_id(tok: str, vocab: Vocabulary = VOCAB) -> int:
    return vocab.blank_id if tok == "_" else vocab.index(tok)


def spell(text: str, frames_per_char: int = 2, gap: int = 2) -> list:
    """A plausible CTC frame sequence for ``text``: each character for some frames then blanks,
    words separated by blank / delimiter / blank."""
    seq: list = ["_"] * gap
    for w, word in enumerate(text.split()):
        if w:
            seq += ["_", "|", "_"]
        for ch in word:
            seq += [ch] * frames_per_char + ["_"]
    return seq + ["_"] * gap


def reference_greedy(log_probs: np.ndarray, vocab: Vocabulary = VOCAB) -> str:
    """argmax -> collapse repeats -> drop blanks -> tokens to text; specials dropped."""
    ids = [k for k, _ in itertools.groupby(np.asarray(log_probs).argmax(axis=1).tolist())]
    text = ""
    for i in ids:
        tok = vocab.tokens[i]
        if i == 0 or tok.startswith("<"):
            continue
        text += " " if tok == "|" else tok
    return " ".join(text.split())


def espeak(text: str, path: Path, voice: str = "en-us", speed: int = 160) -> Path:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def trim_silence(audio: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Cut leading and trailing samples below ``threshold`` (espeak-ng pads its output)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0]: loud[-1] + 1]
