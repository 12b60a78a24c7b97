"""CTC beam search with an n-gram LM and hotwords, advanced frame block by frame block.

The search is pyctcdecode's (0.5): hypotheses are (text, partial word, last token) with the
acoustic score of their alignments; each frame extends every hypothesis by each token whose
log-probability reaches ``token_min_logp`` (and the frame's best token); hypotheses that end up
equal are merged; whole words are scored by the LM (``alpha`` x its natural-log probability +
``beta``) and hotwords; hypotheses more than ``beam_prune_logp`` below the best are dropped and
the best ``beam_width`` kept. Its state lives in a ``SearchState``, so a stream advances one
search chunk by chunk (``advance``), reads the current best hypothesis at any time (``best``)
and ends it (``finish``): decoding a matrix in one call and in any split into blocks gives the
same hypotheses, because every step is per frame.

Three choices differ from pyctcdecode's, each for a measured reason:

* Merged hypotheses keep the *best* alignment's score (Viterbi), not the sum over alignments.
  Summing ranks a labelling by the total probability of all its alignments; over a long stretch
  where blank is the best token but not a confident one (silence, noise: blank ~0.75 per frame,
  other tokens ~0.07), a labelling with one token more gains a factor of the number of places
  it fits, and the summed search prefers "snsnsn..." to the all-blank path the frames favour.
  With the best alignment, a token costs what its frame says. (flashlight's decoder, which
  torchaudio wraps, merges by max too unless ``log_add`` is set.)
* The empty word is not a word: pyctcdecode scores the hypothesis that ends without a partial
  word at the end of the utterance as the LM's unknown word "" (-10 on top of ``<unk>``); the
  empty transcript always ended that way, so silence lost to any single word. Here ending adds
  only ``</s>``.
* The penalty for a partial word that begins no known word is LM knowledge, so it is weighted
  like the LM: ``alpha`` x ln(10) x pyctcdecode's offset (-10, longer partial words more). With
  ``alpha = beta = 0`` the LM then adds nothing, and the search equals the search without one.

Frames where blank is the best token and every other token is below ``token_min_logp`` change
no hypothesis after the first of a run (each one only adds the blank's log-probability to all);
they are skipped, with that log-probability kept aside so scores stay exact.
"""

from __future__ import annotations

import copy
import heapq
import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

LOG10 = math.log(10.0)
MIN_LOGP = math.log(1e-15)      # pyctcdecode clips log-probabilities here
AVG_TOKEN_LEN = 6               # pyctcdecode: longer unknown partial words are penalized more
UNK_OFFSET = -10.0              # pyctcdecode's unknown-word offset (log10 units)

# A hypothesis: (text, next_word, word_part, last_char, text_frames, part_frames, score).
_NULL = (-1, -1)
_EMPTY = ("", "", "", None, (), _NULL, 0.0)


def make_language_model(kenlm_model, unigrams: Iterable[str], alpha: float, beta: float):
    """pyctcdecode's ``LanguageModel`` over a loaded KenLM model, with the scoring described in
    the module docstring and a sorted-list prefix index instead of pyctcdecode's character trie
    (5 s to build for 104k words; the search only asks whether a partial word begins a word)."""
    from pyctcdecode.language_model import _prepare_unigram_set

    lm = _language_model_class()(kenlm_model, None, alpha=alpha, beta=beta, unk_score_offset=UNK_OFFSET)
    lm._unigram_set = _prepare_unigram_set(sorted(unigrams), kenlm_model)
    lm._char_trie = PrefixIndex(lm._unigram_set)
    return lm


def with_weights(language_model, alpha: float, beta: float, unk_score_offset: Optional[float] = None,
                 score_boundary: Optional[bool] = None):
    """The same loaded LM (KenLM model, word set, prefix index shared) with other weights:
    what a request's own ``alpha``/``beta`` cost is this object, a few hundred bytes. An imported
    processor's ``unk_score_offset`` / ``score_boundary`` are set the same way."""
    other = copy.copy(language_model)
    other.alpha, other.beta = float(alpha), float(beta)
    if unk_score_offset is not None:
        other.unk_score_offset = float(unk_score_offset)
    if score_boundary is not None:
        other.score_boundary = bool(score_boundary)
    return other


_CLASS: list = []


def _language_model_class():
    if not _CLASS:
        from pyctcdecode.language_model import LanguageModel

        class WeightedLanguageModel(LanguageModel):
            def score_partial_token(self, partial_token: str) -> float:
                return self.alpha * LOG10 * super().score_partial_token(partial_token)

            def score(self, prev_state, word: str, is_last_word: bool = False):
                if word == "":
                    end = self._get_raw_end_score(prev_state) if is_last_word else 0.0
                    return self.alpha * end * LOG10, prev_state
                return super().score(prev_state, word, is_last_word)

        _CLASS.append(WeightedLanguageModel)
    return _CLASS[0]


class PrefixIndex:
    """``pygtrie.CharTrie.has_node`` over a fixed word set: nonzero when ``prefix`` begins (or is)
    one of the words, 0 otherwise; the one trie query pyctcdecode's LanguageModel makes."""

    def __init__(self, words) -> None:
        import bisect

        self._bisect = bisect.bisect_left
        self._words = sorted(words)

    def has_node(self, prefix: str) -> int:
        i = self._bisect(self._words, prefix)
        return int(i < len(self._words) and self._words[i].startswith(prefix))


@dataclass
class SearchState:
    """One search in progress: its hypotheses (best first), LM caches and frame position."""

    hotword_scorer: object
    language_model: object = None
    beams: list = field(default_factory=lambda: [_EMPTY])
    lm_cache: dict = field(default_factory=dict)
    partial_cache: dict = field(default_factory=dict)
    frames: int = 0                 # frames advanced over
    skipped_logp: float = 0.0       # blank log-probs of skipped frames (shared by all hypotheses)
    prev_inert: bool = False        # the last frame advanced over was inert (see module docstring)


@dataclass(frozen=True)
class Hypothesis:
    """A hypothesis as text and words with [start, end) frames (end exclusive)."""

    text: str
    words: tuple[tuple[str, tuple[int, int]], ...]
    acoustic_score: float
    score: float                    # acoustic + LM + hotwords


class BeamSearch:
    """The search over one label set (pyctcdecode's labels: "" blank, " " word delimiter)."""

    def __init__(self, labels: Sequence[str], language_model=None, *, beam_width: int = 64,
                 beam_prune_logp: float = -10.0, token_min_logp: float = -5.0) -> None:
        self.labels = list(labels)
        self.blank = self.labels.index("")
        self.language_model = language_model
        self.beam_width = beam_width
        self.beam_prune_logp = beam_prune_logp
        self.token_min_logp = token_min_logp

    def start(self, hotwords: Sequence[str] = (), hotword_weight: float = 10.0,
              weights: Optional[tuple[float, float]] = None) -> SearchState:
        """A new search; ``weights``: this search's (alpha, beta) instead of the LM's."""
        from pyctcdecode.language_model import HotwordScorer

        lm = self.language_model
        if lm is not None and weights is not None and tuple(weights) != (lm.alpha, lm.beta):
            lm = with_weights(lm, *weights)
        state = SearchState(HotwordScorer.build_scorer(list(hotwords) or None, weight=hotword_weight), lm)
        start = lm.get_start_state() if lm is not None else None
        state.lm_cache[("", False)] = (0.0, 0.0, start)
        return state

    def advance(self, state: SearchState, log_probs: np.ndarray) -> None:
        """Extend the search over [frames, labels] log-probabilities that follow those advanced
        over so far."""
        if len(log_probs) == 0:
            return
        lp = np.clip(_log_softmax(np.asarray(log_probs, dtype=np.float64)), MIN_LOGP, 0.0)
        candidates = lp >= self.token_min_logp
        argmax = lp.argmax(axis=1)
        candidates[np.arange(len(lp)), argmax] = True
        inert = (argmax == self.blank) & (candidates.sum(axis=1) == 1)
        labels, blank = self.labels, self.blank
        for t in range(len(lp)):
            frame = state.frames + t
            if inert[t] and state.prev_inert:
                state.skipped_logp += lp[t, blank]
                continue
            state.prev_inert = bool(inert[t])
            new_beams: list = []
            col = lp[t]
            for idx in np.flatnonzero(candidates[t]).tolist():
                p = float(col[idx])
                char = labels[idx]
                for text, next_word, word_part, last_char, text_frames, part_frames, score in state.beams:
                    if char == "" or last_char == char:
                        new_part = part_frames if char == "" else (part_frames[0], frame + 1)
                        new_beams.append((text, next_word, word_part, char, text_frames, new_part, score + p))
                    elif char == " ":
                        frames = text_frames if word_part == "" else text_frames + (part_frames,)
                        new_beams.append((text, word_part, "", char, frames, _NULL, score + p))
                    else:
                        new_part = (frame, frame + 1) if part_frames[0] < 0 else (part_frames[0], frame + 1)
                        new_beams.append((text, next_word, word_part + char, char, text_frames, new_part, score + p))
            scored = self._score(_merge(new_beams), state, is_eos=False)
            state.beams = [b[:-1] for b in self._prune(scored)]
        state.frames += len(lp)

    def best(self, state: SearchState) -> Hypothesis:
        """The current best hypothesis, its partial word included (a stream's partial result)."""
        text, _next, word_part, _last, text_frames, part_frames, score = state.beams[0]
        words = tuple(zip(text.split(), text_frames))
        if word_part:
            words += ((word_part, part_frames),)
        return Hypothesis(" ".join(w for w, _ in words), words, score + state.skipped_logp,
                          score + state.skipped_logp)

    def finish(self, state: SearchState) -> list[Hypothesis]:
        """End the search: score the last partial words and ``</s>``; hypotheses best first."""
        beams = [(text, word_part, "", None, text_frames if word_part == "" else text_frames + (part_frames,),
                  _NULL, score)
                 for text, _, word_part, _, text_frames, part_frames, score in state.beams]
        scored = self._prune(self._score(_merge(beams), state, is_eos=True))
        out = []
        for text, _, _, _, text_frames, _, score, combined in scored:
            out.append(Hypothesis(" ".join(text.split()), tuple(zip(text.split(), text_frames)),
                                  score + state.skipped_logp, combined + state.skipped_logp))
        return out

    def _prune(self, scored: list) -> list:
        top = max(b[-1] for b in scored)
        kept = [b for b in scored if b[-1] >= top + self.beam_prune_logp]
        return heapq.nlargest(self.beam_width, kept, key=lambda b: b[-1])

    def _score(self, beams: list, state: SearchState, is_eos: bool) -> list:
        """Each hypothesis with its LM + hotword score appended (pyctcdecode's _get_lm_beams)."""
        lm, hw, cache, partial_cache = state.language_model, state.hotword_scorer, state.lm_cache, state.partial_cache
        out = []
        for text, next_word, word_part, last_char, frame_list, frames, score in beams:
            new_text = _join(text, next_word)
            if lm is None:
                extra = hw.score(new_text) + hw.score_partial_token(word_part)
            else:
                key = (new_text, is_eos)
                if key not in cache:
                    _, prev_raw, start = cache[(text, False)]
                    s, end_state = lm.score(start, next_word, is_last_word=is_eos)
                    cache[key] = (prev_raw + s + hw.score(new_text), prev_raw + s, end_state)
                extra = cache[key][0]
                if word_part:
                    p = partial_cache.get(word_part)
                    if p is None:
                        p = hw.score_partial_token(word_part) if word_part in hw else lm.score_partial_token(word_part)
                        partial_cache[word_part] = p
                    extra += p
            out.append((new_text, "", word_part, last_char, frame_list, frames, score, score + extra))
        return out


def _join(a: str, b: str) -> str:
    return a if not b else b if not a else a + " " + b


def _merge(beams: list) -> list:
    """Hypotheses with the same text, partial word and last token become one, with the best
    alignment's score."""
    merged: dict = {}
    for beam in beams:
        key = (_join(beam[0], beam[1]), beam[2], beam[3])
        held = merged.get(key)
        if held is None or beam[6] > held[6]:
            merged[key] = beam
    return list(merged.values())


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    m[~np.isfinite(m)] = 0
    with np.errstate(divide="ignore"):
        return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
