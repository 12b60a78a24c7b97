"""A phone n-gram language model for wav2vec-U's unsupervised model selection.

fairseq scores the GAN's validation transcriptions with a KenLM 4-gram phone LM trained on the
unpaired text and selects checkpoints by ``weighted_lm_ppl = lm_ppl / vocab_seen_pct ** 2``
(``unpaired_audio_text.py``): no labels needed. KenLM needs ``lmplz`` to build a model, so this
is a small interpolated Witten-Bell n-gram in pure Python; it scores as ``kenlm.Model.score``
does (log10, ``<s>`` context, ``</s>`` counted).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Sequence

BOS, EOS = "<s>", "</s>"


class PhoneLM:
    def __init__(self, sentences: Sequence[Sequence[str]], order: int = 4) -> None:
        if order < 1:
            raise ValueError("an n-gram order is at least 1")
        self.order = order
        self.vocab = sorted({p for s in sentences for p in s} | {EOS})
        # counts[h] = Counter of the tokens after history h (a tuple of 0..order-1 tokens)
        self.counts: dict[tuple, Counter] = defaultdict(Counter)
        for s in sentences:
            toks = [BOS] * (order - 1) + list(s) + [EOS]
            for i in range(order - 1, len(toks)):
                for n in range(order):
                    self.counts[tuple(toks[i - n:i])][toks[i]] += 1
        self.totals = {h: sum(c.values()) for h, c in self.counts.items()}

    def prob(self, history: tuple, token: str) -> float:
        """Interpolated Witten-Bell: P(w|h) = (c(h,w) + T(h) P(w|h')) / (c(h) + T(h)), with T(h)
        the number of distinct tokens seen after h; below the unigram, uniform over the vocabulary."""
        p = 1.0 / (len(self.vocab) + 1)  # +1: unseen tokens keep some mass
        for n in range(len(history) + 1):
            h = history[len(history) - n:] if n else ()
            c = self.counts.get(h)
            if not c:
                break
            t = len(c)
            p = (c[token] + t * p) / (self.totals[h] + t)
        return p

    def score(self, phones: Sequence[str]) -> float:
        """log10 P(phones </s> | <s>)."""
        toks = [BOS] * (self.order - 1) + list(phones) + [EOS]
        return sum(math.log10(self.prob(tuple(toks[i - self.order + 1:i]), toks[i]))
                   for i in range(self.order - 1, len(toks)))

    def perplexity(self, sentences: Sequence[Sequence[str]]) -> float:
        total = sum(self.score(s) for s in sentences)
        n = sum(len(s) + 1 for s in sentences)
        return 10 ** (-total / max(n, 1))
