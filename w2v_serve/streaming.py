"""Streaming recognition: one algorithm, used in-process and by the Triton streaming model.

wav2vec 2.0 attends over the whole utterance, so a stream is recognized in windows::

    |<-- left context -->|<-- chunk -->|<-- right context (look-ahead) -->|
                          ^ logits kept   ^ seen, not yet emitted

aligned to the 320-sample hop (one frame = 20 ms). The Transformer (``transformer.onnx``) is
recomputed over each window; only the chunk's frames are emitted. The conv encoder
(``encoder.onnx``) is exact when streamed with its 400-sample receptive field, so when the
model's encoder has no utterance-level statistics (LayerNorm conv blocks, no waveform
normalization) its features are computed once per frame and cached; otherwise (GroupNorm in the
first block, or per-utterance input normalization) the encoder is rerun over each window's
audio, which normalizes over the window instead of the utterance. Either way the work per chunk
is bounded by the window, not by the stream's length.

Decoding keeps its state per *segment* (the frames since the last end point) in one
incremental search (``CTCDecoder.begin`` / ``advance``): each chunk advances it by the chunk's
frames only, and the partial is its current best hypothesis. A run of pause frames (blank or
word delimiter, ``endpoint_ms``) after speech, a segment reaching ``max_segment_s``, or the end
of the stream end the segment with a final, and the next segment starts. Word times are
relative to the stream's start.

Finals come from a second, full-context pass (``StreamingConfig.full_context_final``, on by
default): the segment's audio is run through the whole model (``model.onnx``, as offline
transcription runs it) and decoded with the same decoder, so a final is the offline transcript
of that audio. A stream that is one segment (no pause of ``endpoint_ms`` before its end, at most
``max_segment_s`` long) ends with exactly the transcript ``w2v transcribe`` gives its audio;
longer streams with pauses are the offline transcripts of their pause-separated pieces. With
the second pass off, a final is the end of the incremental search over the streamed
log-probabilities (equal to decoding them offline in one call), and the window context can
change words against the offline transcript.

Algorithmic latency = chunk + right context (a frame is emitted once its look-ahead arrived).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from w2v_serve.decoding import CTCDecoder, DecodeState, DecoderOptions, Transcript
from w2v_serve.engine import choose_runtime_and_precision, graph_variant, inference_precision
from w2v_serve.model_dir import ENCODER_GRAPH, TRANSFORMER_GRAPH, ModelDirectory
from w2v_serve.sessions import AUTO, STREAMING_PROVIDERS, open_session

FRAME_MS = 20


class StreamError(ValueError):
    """A stream used wrongly: audio after the end, bad samples, unknown stream."""


@dataclass(frozen=True)
class StreamingConfig:
    """Window geometry (milliseconds, rounded to whole 20 ms frames) and end pointing."""

    chunk_ms: int = 640
    left_context_ms: int = 8000
    right_context_ms: int = 320
    endpoint_ms: int = 600          # blank run after speech that ends a segment
    max_segment_s: float = 30.0     # a segment that long is finalized anyway
    full_context_final: bool = True # finals from the whole model over the segment's audio

    def __post_init__(self) -> None:
        if self.chunk_ms < FRAME_MS:
            raise StreamError(f"chunk_ms must be at least {FRAME_MS}")
        if min(self.left_context_ms, self.right_context_ms) < 0:
            raise StreamError("context lengths must be non-negative")
        if self.endpoint_ms < FRAME_MS or self.max_segment_s <= 0:
            raise StreamError("endpoint_ms and max_segment_s must be positive")

    @property
    def chunk_frames(self) -> int:
        return max(1, self.chunk_ms // FRAME_MS)

    @property
    def left_frames(self) -> int:
        return self.left_context_ms // FRAME_MS

    @property
    def right_frames(self) -> int:
        return self.right_context_ms // FRAME_MS

    @property
    def endpoint_frames(self) -> int:
        return max(1, self.endpoint_ms // FRAME_MS)

    @property
    def max_segment_frames(self) -> int:
        return max(self.chunk_frames, int(self.max_segment_s * 1000) // FRAME_MS)

    @property
    def latency_ms(self) -> int:
        return (self.chunk_frames + self.right_frames) * FRAME_MS


@dataclass(frozen=True)
class StreamResult:
    is_final: bool
    transcript: Transcript
    start_s: float                  # segment start on the stream's time line
    end_s: float                    # audio processed so far (partial) or segment end (final)
    stability: float                # 1.0 for finals; share of the partial that is settled

    @property
    def text(self) -> str:
        return self.transcript.text

    def to_dict(self) -> dict:
        return {"is_final": self.is_final, "text": self.text, "start_s": round(self.start_s, 3),
                "end_s": round(self.end_s, 3), "stability": round(self.stability, 3),
                "words": [w.to_dict() for w in self.transcript.words]}

    @staticmethod
    def from_dict(d: dict) -> "StreamResult":
        return StreamResult(d["is_final"], Transcript.from_dict(d), d["start_s"], d["end_s"], d["stability"])


@dataclass
class _StreamState:
    """Everything one stream remembers. Sizes are bounded by the window and the segment."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    audio_start: int = 0            # absolute sample index of audio[0]
    samples: int = 0                # samples received
    features: Optional[np.ndarray] = None   # cached conv features [n, C] (exact mode)
    features_start: int = 0         # absolute frame index of features[0]
    frames_emitted: int = 0         # logits frames emitted so far
    decode: Optional[DecodeState] = None   # the open segment's search (None: not begun)
    segment_frames: int = 0         # frames in the open segment
    segment_start: int = 0          # absolute frame index of the open segment
    segment_audio: list = field(default_factory=list)   # its samples (full-context finals only)
    segment_audio_start: int = 0    # absolute sample index of segment_audio's first sample
    speech_seen: bool = False       # a non-blank frame in the open segment
    blank_run: int = 0              # trailing blank frames in the open segment
    ended: bool = False
    last_used: float = field(default_factory=time.monotonic)


class StreamingRecognizer:
    """Runs many streams over one model directory (thread-safe; ONNX sessions are shared)."""

    def __init__(self, model: ModelDirectory | str, config: StreamingConfig = StreamingConfig(),
                 decoder_options: DecoderOptions = DecoderOptions(),
                 session_factory: Optional[Callable[[str], object]] = None, runtime: str = AUTO,
                 threads: int = 0, precision: str = AUTO, engine=None) -> None:
        """runtime, precision: as the Engine's (``engine.choose_runtime_and_precision``; auto:
        the model's measured fastest on this CPU, as offline transcription picks it, so that a
        stream's final transcript matches it); the precision picks the graph variant of the
        encoder and transformer graphs. threads: of the sessions this recognizer opens
        (``open_streaming_session``). A ``session_factory`` makes the sessions instead.
        ``engine``: what runs full-context finals (an ``Engine``, or anything with its
        ``log_probs``; shared with offline recognition); default: an ``Engine`` over the same
        model, runtime and precision."""
        self.model = model if isinstance(model, ModelDirectory) else ModelDirectory.load(model)
        self.config = config
        card = self.model.card
        if card.frame_stride != FRAME_MS * card.sample_rate // 1000:
            raise StreamError(f"model frame stride {card.frame_stride} is not {FRAME_MS} ms")
        self.sample_rate = card.sample_rate
        self.stride = card.frame_stride
        self.receptive_field = card.receptive_field
        mc = card.model_config
        # Exact, cached conv features need an encoder without utterance-level statistics.
        self.cache_features = mc.get("extractor_mode") == "layer_norm" and not mc.get("normalize_waveform", False)
        self.runtime, self.precision = choose_runtime_and_precision(self.model, runtime, precision, STREAMING_PROVIDERS)
        variant = graph_variant(self.precision)
        make = session_factory or (lambda path: open_streaming_session(path, runtime=self.runtime, threads=threads,
                                                                      precision=self.precision))
        self._encoder = make(str(self.model.graph_path(ENCODER_GRAPH, variant)))
        self._transformer = make(str(self.model.graph_path(TRANSFORMER_GRAPH, variant)))
        self.decoder = CTCDecoder(self.model.vocab, decoder_options, frame_seconds=card.frame_seconds)
        # Frames that are not speech for end pointing: blank, and the word delimiter (some models
        # emit it through pauses).
        vocab = self.model.vocab
        self._pause_ids = {vocab.blank_id} | ({vocab.word_delimiter_id} if vocab.word_delimiter_id is not None else set())
        self._streams: dict[object, _StreamState] = {}
        self._lock = threading.Lock()
        self._engine = engine
        if engine is None and config.full_context_final:   # opened now: a first final costs no start-up
            from w2v_serve.engine import Engine, EngineOptions

            self._engine = Engine(self.model, EngineOptions(runtime=self.runtime, variant=self.precision,
                                                            threads=threads))

    # ------------------------------------------------------------------ stream lifecycle
    def start(self, stream_id: object) -> None:
        with self._lock:
            self._streams[stream_id] = _StreamState()

    def has_stream(self, stream_id: object) -> bool:
        return stream_id in self._streams

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def close(self, stream_id: object) -> None:
        with self._lock:
            self._streams.pop(stream_id, None)

    def expire_idle(self, idle_s: float) -> list:
        """Drop streams unused for ``idle_s`` seconds; returns their ids."""
        now = time.monotonic()
        with self._lock:
            stale = [k for k, s in self._streams.items() if now - s.last_used > idle_s]
            for k in stale:
                del self._streams[k]
        return stale

    def _state(self, stream_id: object) -> _StreamState:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise StreamError(f"unknown stream {stream_id!r} (never started, ended, or expired)") from None

    # ------------------------------------------------------------------ processing
    def accept(self, stream_id: object, audio: np.ndarray, *, end: bool = False,
               hotwords: Optional[Sequence[str]] = None, partials: bool = True) -> list[StreamResult]:
        """Add 16 kHz float32 samples to a stream; returns its new results (partials, finals)."""
        return self.accept_many([(stream_id, audio, end)], hotwords=hotwords, partials=partials)[0]

    def accept_each(self, items: Sequence[tuple[object, np.ndarray, bool]], *,
                    hotwords: Optional[Sequence[str]] = None,
                    partials: bool = True) -> list[list[StreamResult] | Exception]:
        """``accept_many`` where one bad stream does not fail the others: when the batched run
        fails, the streams run one by one, and a stream that fails alone is closed and gets its
        exception in place of its results."""
        try:
            return list(self.accept_many(items, hotwords=hotwords, partials=partials))
        except Exception:
            pass
        out: list[list[StreamResult] | Exception] = []
        for stream_id, audio, end in items:
            try:
                out.append(self.accept(stream_id, audio, end=end, hotwords=hotwords, partials=partials))
            except Exception as e:
                self.close(stream_id)
                out.append(e)
        return out

    def accept_many(self, items: Iterable[tuple[object, np.ndarray, bool]], *,
                    hotwords: Optional[Sequence[str]] = None, partials: bool = True) -> list[list[StreamResult]]:
        """Several streams at once: their windows share one batched Transformer run."""
        items = [(k, np.asarray(a, dtype=np.float32).reshape(-1), end) for k, a, end in items]
        # Check everything before changing anything: a bad item leaves every stream as it was.
        for stream_id, audio, _ in items:
            if self._state(stream_id).ended:
                raise StreamError(f"stream {stream_id!r} already ended")
            if audio.size and not np.isfinite(audio).all():
                raise StreamError(f"stream {stream_id!r}: audio contains non-finite samples")
        states = []
        for stream_id, audio, end in items:
            state = self._state(stream_id)
            state.audio = np.concatenate([state.audio, audio])
            if self.config.full_context_final and audio.size:
                state.segment_audio.append(audio)
            state.samples += audio.size
            state.ended = end
            state.last_used = time.monotonic()
            states.append(state)
        results: list[list[StreamResult]] = [[] for _ in items]
        # Emit chunk after chunk until every stream waits for more audio.
        while True:
            jobs = [(i, s) for i, s in enumerate(states) if self._next_chunk(s) is not None]
            if not jobs:
                break
            emitted = self._run_windows([s for _, s in jobs])
            for (i, s), log_probs in zip(jobs, emitted):
                results[i].extend(self._decode_chunk(s, log_probs, hotwords, partials))
        for i, s in enumerate(states):
            if s.ended:
                results[i].extend(self._finalize(s, hotwords, final_of_stream=True))
            elif partials and results[i] and not results[i][-1].is_final:
                results[i] = [r for r in results[i] if r.is_final] + [results[i][-1]]
        for (stream_id, _, end), s in zip(items, states):
            if end:
                self.close(stream_id)
        return results

    def _available_frames(self, s: _StreamState) -> int:
        if s.samples < self.receptive_field:
            return 0
        return (s.samples - self.receptive_field) // self.stride + 1

    def _next_chunk(self, s: _StreamState) -> Optional[tuple[int, int]]:
        """(first, count) of the next chunk to emit, once its look-ahead has arrived."""
        cfg = self.config
        available = self._available_frames(s)
        pending = available - s.frames_emitted
        if pending <= 0:
            return None
        if pending >= cfg.chunk_frames + cfg.right_frames:
            return s.frames_emitted, cfg.chunk_frames
        if s.ended:
            return s.frames_emitted, min(cfg.chunk_frames, pending)
        return None

    def _window_features(self, s: _StreamState, first: int, last: int) -> np.ndarray:
        """Conv features of frames [first, last) (absolute indices)."""
        stride, rf = self.stride, self.receptive_field
        if not self.cache_features:
            a, b = first * stride - s.audio_start, (last - 1) * stride + rf - s.audio_start
            feats, lengths = self._encoder.run(None, {"audio": s.audio[None, a:b], "lengths": np.array([b - a], np.int64)})
            return feats[0, : int(lengths[0])]
        have = s.features_start + (0 if s.features is None else len(s.features))
        if last > have:  # compute the new frames from their receptive fields only
            a, b = have * stride - s.audio_start, (last - 1) * stride + rf - s.audio_start
            feats, lengths = self._encoder.run(None, {"audio": s.audio[None, a:b], "lengths": np.array([b - a], np.int64)})
            new = feats[0, : int(lengths[0])]
            s.features = new if s.features is None else np.concatenate([s.features, new])
        return s.features[first - s.features_start: last - s.features_start]

    def _run_windows(self, states: list[_StreamState]) -> list[np.ndarray]:
        """One batched Transformer run over every ready stream's window; returns each chunk's
        log-probabilities and advances the streams."""
        cfg = self.config
        windows, spans = [], []
        for s in states:
            first, count = self._next_chunk(s)  # type: ignore[misc]
            lo = max(0, first - cfg.left_frames)
            hi = min(self._available_frames(s), first + count + cfg.right_frames)
            windows.append(self._window_features(s, lo, hi))
            spans.append((first - lo, count))
        width = max(len(w) for w in windows)
        batch = np.zeros((len(windows), width, windows[0].shape[1]), np.float32)
        for i, w in enumerate(windows):
            batch[i, : len(w)] = w
        lengths = np.array([len(w) for w in windows], np.int64)
        logits, _ = self._transformer.run(None, {"features": batch, "feature_lengths": lengths})
        out = []
        for s, (offset, count), row in zip(states, spans, logits):
            out.append(row[offset: offset + count])
            s.frames_emitted += count
            self._trim(s)
        return out

    def _trim(self, s: _StreamState) -> None:
        """Forget audio and features that no future window needs."""
        keep_from = max(0, s.frames_emitted - self.config.left_frames)
        if self.cache_features and s.features is not None:
            computed = s.features_start + len(s.features)
            drop = keep_from - s.features_start
            if drop > 0:
                s.features = s.features[drop:]
                s.features_start = keep_from
            keep_sample = computed * self.stride  # next frame to compute starts here
        else:
            keep_sample = keep_from * self.stride
        drop = keep_sample - s.audio_start
        if drop > 0:
            s.audio = s.audio[drop:]
            s.audio_start = keep_sample

    # ------------------------------------------------------------------ decoding
    def _decode_chunk(self, s: _StreamState, log_probs: np.ndarray, hotwords, partials: bool) -> list[StreamResult]:
        """Advance the open segment's search over a chunk, ending segments at end points."""
        results = []
        best = log_probs.argmax(axis=1)
        done = 0                    # rows of the chunk already given to a search
        # Finals from the second pass and no partials asked: the first pass's search has no use.
        search = partials or not self.config.full_context_final
        for t in range(len(log_probs)):
            if best[t] in self._pause_ids:
                s.blank_run += 1
            else:
                s.speech_seen, s.blank_run = True, 0
            s.segment_frames += 1
            if (s.speech_seen and s.blank_run >= self.config.endpoint_frames) or \
                    s.segment_frames >= self.config.max_segment_frames:
                if search:
                    self._advance(s, log_probs[done:t + 1], hotwords)
                done = t + 1
                results.extend(self._finalize(s, hotwords, final_of_stream=False))
        if search:
            self._advance(s, log_probs[done:], hotwords)
        if partials and s.decode is not None and s.speech_seen:
            tr = self.decoder.partial(s.decode)
            settled = max(0, s.segment_frames - self.config.chunk_frames)
            results.append(StreamResult(False, tr, s.segment_start * self._frame_s,
                                        s.frames_emitted * self._frame_s, settled / max(1, s.segment_frames)))
        return results

    def _advance(self, s: _StreamState, rows: np.ndarray, hotwords) -> None:
        if not len(rows):
            return
        if s.decode is None:
            s.decode = self.decoder.begin(hotwords=hotwords, frame_offset=s.segment_start)
        self.decoder.advance(s.decode, rows)

    @property
    def _frame_s(self) -> float:
        return self.model.card.frame_seconds

    def _full_context(self, s: _StreamState, end_frame: int, final_of_stream: bool, hotwords) -> Transcript:
        """The segment's audio through the whole model, decoded like an offline recording."""
        audio = np.concatenate(s.segment_audio) if s.segment_audio else np.zeros(0, np.float32)
        s.segment_audio = [audio]
        a = s.segment_start * self.stride - s.segment_audio_start
        b = len(audio) if final_of_stream else (end_frame - 1) * self.stride + self.receptive_field - s.segment_audio_start
        log_probs = self._engine.log_probs(audio[a:b])
        return self.decoder.decode(log_probs, frame_offset=s.segment_start, hotwords=hotwords)

    def _finalize(self, s: _StreamState, hotwords, final_of_stream: bool) -> list[StreamResult]:
        out = []
        end = s.segment_start + s.segment_frames
        if s.segment_frames and s.speech_seen:
            if self.config.full_context_final:
                tr = self._full_context(s, end, final_of_stream, hotwords)
            elif s.decode is not None:
                tr = self.decoder.finish(s.decode)
            else:
                tr = Transcript("")
            out.append(StreamResult(True, tr, s.segment_start * self._frame_s, end * self._frame_s, 1.0))
        s.segment_start = end
        s.decode, s.segment_frames, s.speech_seen, s.blank_run = None, 0, False, 0
        if self.config.full_context_final and not final_of_stream:
            # The next segment's audio starts at its first frame.
            audio = np.concatenate(s.segment_audio) if s.segment_audio else np.zeros(0, np.float32)
            drop = max(0, min(len(audio), end * self.stride - s.segment_audio_start))
            s.segment_audio = [audio[drop:]]
            s.segment_audio_start += drop
        if final_of_stream and not out:  # the end of a stream always gets a final, maybe empty
            out.append(StreamResult(True, Transcript(""), s.segment_start * self._frame_s,
                                    s.segment_start * self._frame_s, 1.0))
        return out


def open_streaming_session(path: str, runtime: str = AUTO, threads: int = 0, precision: Optional[str] = None):
    """A session for a streaming graph: CUDA when there is one, not TensorRT (it would build an
    engine for every new window shape); ``auto``: OpenVINO on CPU when it is installed; precision
    ``bf16`` runs it in bf16 (OpenVINO); the rest as every session (w2v_serve.sessions)."""
    return open_session(path, runtime=runtime, providers=STREAMING_PROVIDERS, threads=threads,
                        precision=inference_precision(precision) if precision else None)
