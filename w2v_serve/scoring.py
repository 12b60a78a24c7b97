"""Error rates (CER/WER) of transcripts: edit distances in pure Python (no torch, no numpy).

``w2v eval`` (training.evaluate) and fine-tuning's dev evaluation (training.finetune) both score
with these, after decoding with the runtime's CTC decoder (w2v_serve.decoding).
"""

from __future__ import annotations

from typing import Sequence


def normalize_for_scoring(text: str) -> str:
    """Lower case, whitespace runs collapsed to one space, no leading/trailing space."""
    return " ".join(text.lower().split())


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def error_counts(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, int]:
    """Character and word edit distances and reference lengths, summed (rates = errors / length)."""
    c_err = c_len = w_err = w_len = 0
    for ref, hyp in zip(refs, hyps):
        c_err += edit_distance(ref, hyp)
        c_len += len(ref)
        w_err += edit_distance(ref.split(), hyp.split())
        w_len += len(ref.split())
    return {"char_errors": c_err, "chars": c_len, "word_errors": w_err, "words": w_len}
