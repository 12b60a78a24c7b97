"""CTC decoding: one wrapper for greedy and beam search (pyctcdecode, optional KenLM, hotwords).

Input is a [frames, vocab] matrix of log-probabilities (what model.onnx emits). Output is a
``Transcript``: text plus words with start/end times in seconds and a confidence in (0, 1].

Word times follow pyctcdecode's convention for both decoders: a word starts at the first frame
that emits one of its characters and ends after the last frame that emits one (repeats of the
last character included); blanks around it do not count. Frame ``t`` starts at ``t * frame_seconds``.

Word confidence is the same quantity for both decoders: the per-frame geometric mean
probability of the best CTC alignment of the word's characters over the word's frames. For
greedy output that alignment is the argmax path itself, so it reduces to the mean of the frames'
max log-probabilities; for beam output (where an LM or a hotword may have chosen a word the
frames did not favour) it is computed by a small Viterbi pass, and is low when the acoustics
disagree with the choice.

Kept free of batching and file concerns so the streaming service can reuse it segment by segment
(``frame_offset`` places a segment's words on the whole recording's time line).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from w2v_serve.beam_search import BeamSearch, Hypothesis, SearchState, make_language_model, with_weights
from w2v_serve.hotwords import hotwords_problem
from w2v_serve.vocab import Vocabulary

GREEDY = "greedy"
BEAM = "beam"
METHODS = (GREEDY, BEAM)

DEFAULT_BEAM_WIDTH = 64
DEFAULT_ALPHA = 0.5          # LM weight (pyctcdecode's default)
DEFAULT_BETA = 1.0           # word insertion bonus
DEFAULT_HOTWORD_WEIGHT = 10.0
# Log-probabilities are clipped here (pyctcdecode clips at log(1e-15) too) so a Viterbi pass over
# a word that the frames strongly reject gives a tiny confidence instead of -inf.
_MIN_LOGP = math.log(1e-15)
# pyctcdecode labels for special tokens look like "⁇3" (see Vocabulary.pyctcdecode_labels).
_SPECIAL_LABEL = re.compile(r"⁇\d+")


class DecoderError(ValueError):
    """Bad decoder options or an unusable language model file."""


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float
    end_s: float
    confidence: float

    def to_dict(self) -> dict:
        return {"word": self.word, "start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3),
                "confidence": round(self.confidence, 4)}

    @staticmethod
    def from_dict(d: dict) -> "Word":
        return Word(d["word"], d["start_s"], d["end_s"], d.get("confidence", 1.0))


@dataclass(frozen=True)
class Transcript:
    """The decode of one utterance (or one segment of a long one)."""

    text: str
    words: tuple[Word, ...] = ()
    score: float = 0.0           # log score of the chosen hypothesis (acoustic [+ LM, hotwords])

    @staticmethod
    def from_dict(d: dict) -> "Transcript":
        """The ``{"text", "words"}`` of a result's ``to_dict`` (as Triton's models send them)."""
        return Transcript(d.get("text", ""), tuple(Word.from_dict(w) for w in d.get("words", [])))

    @staticmethod
    def join(parts: Sequence["Transcript"]) -> "Transcript":
        """Concatenate consecutive segments of one recording."""
        words = tuple(w for p in parts for w in p.words)
        text = " ".join(p.text for p in parts if p.text)
        return Transcript(text, words, float(sum(p.score for p in parts)))


@dataclass(frozen=True)
class DecoderOptions:
    """How to decode. ``lm`` (ARPA or KenLM binary) and hotwords need the beam decoder."""

    method: str = GREEDY
    beam_width: int = DEFAULT_BEAM_WIDTH
    lm: Optional[str] = None
    unigrams: Optional[str] = None        # word list for a binary LM (default: beside the LM)
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    hotwords: tuple[str, ...] = ()
    hotword_weight: float = DEFAULT_HOTWORD_WEIGHT
    beam_prune_logp: float = -10.0
    token_min_logp: float = -5.0
    # pyctcdecode's LM scoring of unknown words and of word boundaries (an imported
    # Wav2Vec2ProcessorWithLM's attrs.json may set them; the card's "decoding" records them).
    unk_score_offset: float = -10.0
    score_boundary: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DecoderError(f"unknown decoder {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method == GREEDY and self.lm:
            raise DecoderError("a language model needs the beam decoder (--decoder beam)")
        if self.beam_width < 1:
            raise DecoderError(f"beam width must be at least 1, got {self.beam_width}")
        object.__setattr__(self, "hotwords", tuple(h.strip() for h in self.hotwords if h.strip()))
        decoder_method(self.method, self.hotwords)


def decoder_method(requested: Optional[str], hotwords: Iterable[str] = (), default: Optional[str] = GREEDY) -> Optional[str]:
    """The one rule for which decoder runs: hotwords need beam search, so asking for greedy with
    hotwords is an error; with nothing asked, hotwords mean beam, else ``default`` (None: leave
    the choice to a server)."""
    if requested is not None and requested not in METHODS:
        raise DecoderError(f"unknown decoder {requested!r}; choose one of {', '.join(METHODS)}")
    hotwords = tuple(hotwords)
    if problem := hotwords_problem(hotwords):
        raise DecoderError(problem)
    if requested == GREEDY and any(hotwords):
        raise DecoderError("hotwords need the beam decoder (--decoder beam, or leave the decoder unset)")
    return requested or (BEAM if any(hotwords) else default)


def options_for_model(model_dir, *, method: Optional[str] = None, lm: Optional[str] = None,
                      no_lm: bool = False, alpha: Optional[float] = None, beta: Optional[float] = None,
                      **rest) -> DecoderOptions:
    """Decoder options for one model directory, the way every command reads its flags.

    A model may ship its own language model (the card's ``decoding`` section: an LM file in the
    directory with alpha/beta tuned on its dev set). Beam search without ``lm`` uses it unless
    ``no_lm``; alpha/beta default to the card's values when the LM in use is the shipped one,
    else to pyctcdecode's defaults. Without ``method``: beam when an LM or hotwords are given or
    the model ships an LM (and ``no_lm`` is not set), else greedy."""
    from w2v_serve.model_dir import ModelDirectory

    directory = ModelDirectory.load(model_dir)
    shipped = directory.shipped_lm
    hotwords = tuple(rest.get("hotwords") or ())
    if lm and no_lm:
        raise DecoderError("--lm and --no-lm contradict each other")
    # A model that ships an LM is decoded with it unless told otherwise; greedy is one flag away.
    method = decoder_method(method, hotwords, default=BEAM if (lm or (shipped is not None and not no_lm)) else GREEDY)
    if method == BEAM and lm is None and shipped is not None and not no_lm:
        lm = str(shipped)
    tuned = shipped is not None and lm is not None and Path(lm).resolve() == shipped.resolve()
    card = directory.card.decoding if tuned else {}
    for key in ("unk_score_offset", "score_boundary"):
        if key in card and rest.get(key) is None:
            rest[key] = card[key]
    return DecoderOptions(method=method, lm=lm,
                          alpha=alpha if alpha is not None else float(card.get("alpha", DEFAULT_ALPHA)),
                          beta=beta if beta is not None else float(card.get("beta", DEFAULT_BETA)),
                          **{k: v for k, v in rest.items() if v is not None})


@dataclass
class DecodeState:
    """A sequence being decoded block by block (``CTCDecoder.begin``): its frames so far (for
    greedy decoding and word confidences) and the beam search's state."""

    frame_offset: int
    search: Optional[SearchState]
    rows: list = field(default_factory=list)
    confidences: dict = field(default_factory=dict)

    def log_probs(self) -> np.ndarray:
        if len(self.rows) > 1:
            self.rows = [np.concatenate(self.rows)]
        return self.rows[0]


class CTCDecoder:
    """Greedy or beam-search CTC decoding over one vocabulary.

    Building a beam decoder with an LM loads the LM once; ``decode`` is then cheap to call per
    request, and per-request hotwords are passed to ``decode``.
    """

    def __init__(self, vocab: Vocabulary, options: DecoderOptions = DecoderOptions(), *,
                 frame_seconds: float = 0.02):
        self.vocab = vocab
        self.options = options
        self.frame_seconds = frame_seconds
        self._labels = vocab.pyctcdecode_labels()
        self._label_to_id = {lab: i for i, lab in enumerate(self._labels)}
        self._delimiter = vocab.word_delimiter_id
        # Tokens that never show in text: blank, specials (<unk>, <s>, ...).
        self._silent = np.zeros(len(vocab), dtype=bool)
        self._silent[vocab.blank_id] = True
        for i, lab in enumerate(self._labels):
            if _SPECIAL_LABEL.fullmatch(lab):
                self._silent[i] = True
        self._beam = _build_beam_decoder(self._labels, options) if options.method == BEAM else None

    # ------------------------------------------------------------------ public
    def decode(self, log_probs: np.ndarray, *, frame_offset: int = 0,
               hotwords: Optional[Iterable[str]] = None, hotword_weight: Optional[float] = None,
               alpha: Optional[float] = None, beta: Optional[float] = None) -> Transcript:
        """Decode one [frames, vocab] log-probability matrix.

        ``hotwords``/``hotword_weight`` and the LM weights ``alpha``/``beta`` override the
        options' for this call (beam only; the loaded LM is shared, so they cost nothing to
        change). ``frame_offset`` shifts word times (a segment that starts later in the recording).
        """
        log_probs = self._check(log_probs)
        if log_probs.shape[0] == 0:
            return Transcript("")
        state = self.begin(hotwords=hotwords, hotword_weight=hotword_weight, frame_offset=frame_offset,
                           alpha=alpha, beta=beta)
        self.advance(state, log_probs)
        return self.finish(state)

    def begin(self, *, hotwords: Optional[Iterable[str]] = None, hotword_weight: Optional[float] = None,
              frame_offset: int = 0, alpha: Optional[float] = None, beta: Optional[float] = None) -> "DecodeState":
        """Start decoding a sequence whose frames arrive in blocks (a stream's segment).

        ``advance`` each block in order, read ``partial`` at any time, and ``finish`` once: the
        result equals ``decode`` of the blocks' concatenation (the search's steps are per frame)."""
        if self._beam is None:
            decoder_method(GREEDY, hotwords or ())
            return DecodeState(frame_offset, None)
        words = self.options.hotwords if hotwords is None else tuple(hotwords)
        weight = self.options.hotword_weight if hotword_weight is None else hotword_weight
        weights = None
        if alpha is not None or beta is not None:
            weights = (self.options.alpha if alpha is None else alpha, self.options.beta if beta is None else beta)
        return DecodeState(frame_offset, self._beam.start(words, weight, weights))

    def advance(self, state: "DecodeState", log_probs: np.ndarray) -> None:
        """Extend a sequence by the next block of frames."""
        log_probs = self._check(log_probs)
        if not len(log_probs):
            return
        state.rows.append(log_probs)
        if state.search is not None:
            self._beam.advance(state.search, log_probs)

    def partial(self, state: "DecodeState") -> Transcript:
        """The best hypothesis so far (beam: the search's current best, its last word maybe
        unfinished; greedy: the best path so far)."""
        if not state.rows:
            return Transcript("")
        if state.search is None:
            return self._greedy(state.log_probs(), state.frame_offset)
        return self._transcript(self._beam.best(state.search), state)

    def finish(self, state: "DecodeState") -> Transcript:
        """The sequence's final transcript."""
        if not state.rows:
            return Transcript("")
        if state.search is None:
            return self._greedy(state.log_probs(), state.frame_offset)
        return self._transcript(self._beam.finish(state.search)[0], state)

    def decode_nbest(self, log_probs: np.ndarray, n: int, *, frame_offset: int = 0,
                     hotwords: Optional[Iterable[str]] = None,
                     hotword_weight: Optional[float] = None) -> list[Transcript]:
        """Up to ``n`` hypotheses, best first, with distinct texts: the beam's final beams
        (greedy decoding has one). The first is ``decode``'s."""
        log_probs = self._check(log_probs)
        if self._beam is None or n <= 1 or log_probs.shape[0] == 0:
            return [self.decode(log_probs, frame_offset=frame_offset, hotwords=hotwords,
                                hotword_weight=hotword_weight)]
        state = self.begin(hotwords=hotwords, hotword_weight=hotword_weight, frame_offset=frame_offset)
        self.advance(state, log_probs)
        out: list[Transcript] = []
        for hyp in self._beam.finish(state.search):
            t = self._transcript(hyp, state)
            if all(t.text != o.text for o in out):
                out.append(t)
            if len(out) == n:
                break
        return out

    # ------------------------------------------------------------------ greedy
    def _greedy(self, log_probs: np.ndarray, frame_offset: int) -> Transcript:
        best = log_probs.argmax(axis=1)
        best_logp = log_probs[np.arange(len(best)), best]
        words: list[Word] = []
        chars: list[int] = []
        start = end = -1
        prev = -1

        def close_word() -> None:
            text = self.vocab.decode(chars)
            if text:
                conf = float(np.exp(best_logp[start:end].mean()))
                words.append(self._word(text, start, end, conf, frame_offset))

        for t, tok in enumerate(best.tolist()):
            if tok == self._delimiter:
                if chars:
                    close_word()
                chars, start = [], -1
            elif tok != self.vocab.blank_id:
                if tok != prev:
                    chars.append(tok)
                if start < 0:
                    start = t
                end = t + 1
            prev = tok
        if chars:
            close_word()
        return Transcript(" ".join(w.word for w in words), tuple(words), float(best_logp.sum()))

    # ------------------------------------------------------------------ beam
    def _transcript(self, hyp: Hypothesis, state: "DecodeState") -> Transcript:
        log_probs = state.log_probs()
        words = []
        for label_word, (start, end) in hyp.words:
            text = _SPECIAL_LABEL.sub("", label_word)
            if not text:
                continue
            key = (label_word, start, end)
            conf = state.confidences.get(key)
            if conf is None:
                conf = alignment_confidence(np.maximum(log_probs[start:end], _MIN_LOGP), self._label_ids(label_word),
                                            self.vocab.blank_id)
                state.confidences[key] = conf
            words.append(self._word(text, start, end, conf, state.frame_offset))
        return Transcript(" ".join(w.word for w in words), tuple(words), float(hyp.score))

    def _label_ids(self, label_word: str) -> list[int]:
        ids, pos = [], 0
        while pos < len(label_word):
            m = _SPECIAL_LABEL.match(label_word, pos)
            lab = m.group(0) if m else label_word[pos]
            ids.append(self._label_to_id[lab])
            pos += len(lab)
        return ids

    # ------------------------------------------------------------------ helpers
    def _word(self, text: str, start: int, end: int, confidence: float, frame_offset: int) -> Word:
        return Word(text, (start + frame_offset) * self.frame_seconds, (end + frame_offset) * self.frame_seconds,
                    confidence)

    def _check(self, log_probs: np.ndarray) -> np.ndarray:
        log_probs = np.asarray(log_probs, dtype=np.float32)
        if log_probs.ndim != 2 or log_probs.shape[1] != len(self.vocab):
            raise DecoderError(f"expected log-probabilities [frames, {len(self.vocab)}], got shape {log_probs.shape}")
        if np.isnan(log_probs).any():
            raise DecoderError(f"the log-probabilities hold {int(np.isnan(log_probs).sum())} NaN values of "
                               f"{log_probs.size}: the model's output is unusable (a precision it does not hold? "
                               f"`w2v precision-check` tests each one)")
        return log_probs


def alignment_confidence(log_probs: np.ndarray, ids: Sequence[int], blank: int = 0) -> float:
    """exp(mean per-frame log-prob) of the best CTC alignment of ``ids`` over all of ``log_probs``,
    starting on the first token and ending on the last (the word's own frames, no blank margins)."""
    n_frames, n_tok = log_probs.shape[0], len(ids)
    if n_frames == 0 or n_tok == 0:
        return 0.0
    # States 0..2L-2: token k at 2k, the blank between tokens k and k+1 at 2k+1.
    n_states = 2 * n_tok - 1
    labels = np.array([ids[s // 2] if s % 2 == 0 else blank for s in range(n_states)])
    # A token state may be entered from two back unless it repeats the previous token.
    skip = np.zeros(n_states, dtype=bool)
    for s in range(2, n_states, 2):
        skip[s] = labels[s] != labels[s - 2]
    score = np.full(n_states, -np.inf)
    score[0] = log_probs[0, labels[0]]
    for t in range(1, n_frames):
        prev = score.copy()
        best = prev.copy()
        best[1:] = np.maximum(best[1:], prev[:-1])
        best[2:] = np.where(skip[2:], np.maximum(best[2:], prev[:-2]), best[2:])
        score = best + log_probs[t, labels]
    final = score[-1]
    return float(np.exp(final / n_frames)) if np.isfinite(final) else 0.0


def _build_beam_decoder(labels: list[str], options: DecoderOptions) -> BeamSearch:
    # pyctcdecode logs a warning per call for tiny unigram lists and ARPA loading; keep stderr clean.
    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
    search = dict(beam_width=options.beam_width, beam_prune_logp=options.beam_prune_logp,
                  token_min_logp=options.token_min_logp)
    if options.lm is None:
        return BeamSearch(labels, None, **search)
    lm_path = Path(options.lm)
    if not lm_path.is_file():
        raise DecoderError(f"{lm_path}: no such language model file")
    try:
        import kenlm  # noqa: F401  (loaded by _loaded_lm)
    except ImportError as e:
        raise DecoderError("a language model needs the 'kenlm' package: pip install 'w2v[lm]'") from e
    from w2v_serve.lm import unigrams_path_for

    unigrams_file = Path(options.unigrams) if options.unigrams else unigrams_path_for(lm_path)
    if not unigrams_file.is_file() and not _is_arpa(lm_path):
        raise DecoderError(f"{lm_path}: a binary LM needs its unigram list ({unigrams_file} not found; "
                           "pass unigrams=... / --unigrams FILE)")
    lm = with_weights(_loaded_lm(lm_path, unigrams_file), options.alpha, options.beta,
                      options.unk_score_offset, options.score_boundary)
    return BeamSearch(labels, lm, **search)


_LOADED: dict = {}
_LOADED_LOCK = threading.Lock()


def _file_key(path: Path) -> tuple:
    st = path.stat() if path.is_file() else None
    return (str(path.resolve()), st.st_mtime_ns if st else None, st.st_size if st else None)


def _loaded_lm(lm_path: Path, unigrams_file: Path):
    """The LM of a file, loaded once per process (and inherited by forked decode workers):
    decoders with other weights, beam widths or hotwords share it. A changed file is reloaded."""
    key = (_file_key(lm_path), _file_key(unigrams_file))
    with _LOADED_LOCK:
        if key not in _LOADED:
            import kenlm
            from w2v_serve.lm import read_unigrams

            unigrams = read_unigrams(unigrams_file if unigrams_file.is_file() else lm_path)
            try:
                config = kenlm.Config()
                config.show_progress = False    # KenLM draws a loading bar on stderr otherwise
                config.arpa_complain = kenlm.ARPALoadComplain.NONE     # "faster if you build a binary file"
                model = kenlm.Model(str(lm_path), config)
            except (OSError, RuntimeError) as e:
                raise DecoderError(f"{lm_path}: cannot load language model ({e})") from e
            for stale in [k for k in _LOADED if k[0][0] == key[0][0]]:
                del _LOADED[stale]
            _LOADED[key] = make_language_model(model, unigrams, DEFAULT_ALPHA, DEFAULT_BETA)
        return _LOADED[key]


def _is_arpa(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return b"\\data\\" in head


def safe_cut_frame(log_probs: np.ndarray, vocab: Vocabulary, lo: int, hi: int,
                   min_pause_frames: int = 10) -> Optional[int]:
    """A frame in [lo, hi) where a long recording's logits can be split into independently
    decoded segments without splitting a word: the middle of the longest run of frames whose best
    token is blank or the word delimiter, provided the run holds a delimiter or is a pause of at
    least ``min_pause_frames``. None if there is no such run."""
    best = log_probs[lo:hi].argmax(axis=1)
    gap = (best == vocab.blank_id)
    delim = vocab.word_delimiter_id
    is_delim = (best == delim) if delim is not None else np.zeros_like(gap)
    gap |= is_delim
    best_run, best_len = None, 0
    t, n = 0, len(best)
    while t < n:
        if not gap[t]:
            t += 1
            continue
        s = t
        while t < n and gap[t]:
            t += 1
        length = t - s
        # A run that touches the range edge may continue a word on the far side.
        interior = s > 0 and t < n
        if interior and (is_delim[s:t].any() or length >= min_pause_frames) and length > best_len:
            best_run, best_len = (s, t), length
    if best_run is None:
        return None
    return lo + (best_run[0] + best_run[1]) // 2
