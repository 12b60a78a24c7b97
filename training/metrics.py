"""Greedy CTC decoding of training-time logits and error rates (CER/WER) for dev evaluation."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from w2v_serve.vocab import Vocabulary


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


def greedy_decode(logits: Tensor, frame_lengths: Tensor, vocab: Vocabulary) -> list[str]:
    """Best path: argmax per frame, repeats collapsed, blanks dropped. logits [B, T, V]."""
    best = logits.argmax(dim=-1).cpu()
    out = []
    for row, n in zip(best.tolist(), frame_lengths.cpu().tolist()):
        ids, prev = [], None
        for token in row[: int(n)]:
            if token != prev and token != vocab.blank_id:
                ids.append(token)
            prev = token
        out.append(vocab.decode(ids))
    return out


def error_counts(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, int]:
    """Character and word edit distances and reference lengths, summed (rates = errors / length)."""
    c_err = c_len = w_err = w_len = 0
    for ref, hyp in zip(refs, hyps):
        c_err += edit_distance(ref, hyp)
        c_len += len(ref)
        w_err += edit_distance(ref.split(), hyp.split())
        w_len += len(ref.split())
    return {"char_errors": c_err, "chars": c_len, "word_errors": w_err, "words": w_len}
