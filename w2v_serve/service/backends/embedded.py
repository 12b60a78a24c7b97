"""The in-process backend: the model runs here (ONNX Runtime or OpenVINO, ``runtime``).

Streams use ``StreamingRecognizer`` (one per decoder setting, all sharing the same two ONNX
sessions) through the single ``InferenceWorker`` thread; ``Recognize`` uses ``Transcriber`` over
one shared ``Engine`` (model.onnx), on a thread of its own so a long file does not stall streams'
event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Optional

import grpc
import numpy as np

from w2v_serve.service.backends import StreamOptions
from w2v_serve.decoding import BEAM, GREEDY, DecoderError, DecoderOptions, Transcript, decoder_method
from w2v_serve.service.backends.inference_worker import ComputeBudgetExceeded, InferenceWorker
from w2v_serve.model_dir import ModelDirectory
from w2v_serve.precision import ensure_precision_record
from w2v_serve.service.errors import ServiceError, compute_exhausted, invalid_argument
from w2v_serve.engine import Engine, EngineOptions, choose_runtime_and_precision
from w2v_serve.sessions import STREAMING_PROVIDERS
from w2v_serve.streaming import StreamError, StreamingConfig, StreamingRecognizer, StreamResult, open_streaming_session
from w2v_serve.transcribe import Transcriber, TranscriptionResult

# Each distinct (method, beam width) gets its own recognizer and decoder (an LM is loaded per
# beam decoder), so the number of distinct settings a server will build is capped.
MAX_DECODER_SETTINGS = 8


def resolve_decoder(default: DecoderOptions, options: StreamOptions) -> DecoderOptions:
    """The server's decoder options with a request's method and beam width applied."""
    width = options.beam_width or default.beam_width
    try:
        method = decoder_method(options.method, options.hotwords, default=default.method)
        if method == GREEDY:
            if options.alpha is not None or options.beta is not None:
                raise DecoderError("LM weights (alpha, beta) need the beam decoder")
            return DecoderOptions(method=GREEDY, beam_width=width)
        weights = {k: v for k, v in (("alpha", options.alpha), ("beta", options.beta)) if v is not None}
        return replace(default, method=BEAM, beam_width=width, hotwords=(), **weights)
    except DecoderError as e:
        raise invalid_argument(str(e)) from None


class EmbeddedStream:
    def __init__(self, backend: "EmbeddedBackend", recognizer: StreamingRecognizer, options: StreamOptions) -> None:
        self._backend, self._rec, self._options = backend, recognizer, options
        self.stream_id = next(backend._ids)
        self.description = "embedded"
        self._open = True
        self.compute_s = 0.0          # the inference worker's time on this stream's audio
        recognizer.start(self.stream_id)

    async def send(self, audio: np.ndarray, *, end: bool, budget_s: float = math.inf) -> list[StreamResult]:
        future = self._backend.worker.submit(self._rec, self.stream_id, audio, end=end,
                                             hotwords=self._options.hotwords or None,
                                             partials=self._options.interim_results, budget_s=budget_s)
        try:
            results, compute_s = await asyncio.wrap_future(future)
        except StreamError as e:
            self._open = False
            raise invalid_argument(str(e)) from None
        except ComputeBudgetExceeded:
            self._open = False
            self.compute_s += budget_s
            raise compute_exhausted(budget_s) from None
        self.compute_s += compute_s
        if end:
            self._open = False   # the recognizer closed it with the final result
        return results

    def close(self) -> None:
        if self._open:
            self._open = False
            self._backend.worker.close(self._rec, self.stream_id)


class _SharedEngine:
    """The backend's Engine, opened when a stream's first full-context final needs it."""

    def __init__(self, backend: "EmbeddedBackend") -> None:
        self._backend = backend

    def log_probs(self, audio: np.ndarray) -> np.ndarray:
        return self._backend.engine().log_probs(audio)


class EmbeddedBackend:
    name = "embedded"

    def __init__(self, model_dir: str | Path, stream_config: StreamingConfig = StreamingConfig(),
                 decoder: DecoderOptions = DecoderOptions(), runtime: str = "auto") -> None:
        self.model = ModelDirectory.load(model_dir)
        ensure_precision_record(self.model, runtime=runtime, providers=STREAMING_PROVIDERS)  # first use on this CPU
        # Runtime and precision of the streaming sessions and the Engine, chosen once for both.
        self.runtime, self.precision = choose_runtime_and_precision(self.model, runtime, "auto", STREAMING_PROVIDERS)
        self.stream_config = stream_config
        self.decoder = decoder
        self.sample_rate = self.model.card.sample_rate
        self.worker = InferenceWorker()
        self._ids = itertools.count(1)
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()
        self._recognizers: dict[tuple[DecoderOptions, StreamingConfig], StreamingRecognizer] = {}
        self._recognizer(decoder)   # load the sessions now: a bad model fails at start-up
        self._offline_thread = ThreadPoolExecutor(1, thread_name_prefix="w2v-recognize")
        self._transcribers: dict[DecoderOptions, object] = {}
        self._engine = None
        if stream_config.full_context_final:
            self.engine()           # streams' finals run it: opened at start-up, not by a first final

    def _session(self, path: str):
        if path not in self._sessions:
            self._sessions[path] = open_streaming_session(path, runtime=self.runtime, precision=self.precision)
        return self._sessions[path]

    def _recognizer(self, options: DecoderOptions, endpoint_ms: Optional[int] = None) -> StreamingRecognizer:
        window = self.stream_config
        if endpoint_ms and endpoint_ms != window.endpoint_ms:
            window = replace(window, endpoint_ms=endpoint_ms)
        key = (options, window)
        with self._lock:
            rec = self._recognizers.get(key)
            if rec is None:
                if len(self._recognizers) >= MAX_DECODER_SETTINGS:
                    raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"this server builds at most {MAX_DECODER_SETTINGS} decoder and "
                                       "end-pointing settings per model; use the default or one already in use")
                rec = StreamingRecognizer(self.model, window, options, session_factory=self._session,
                                          runtime=self.runtime, precision=self.precision,
                                          engine=_SharedEngine(self))
                self._recognizers[key] = rec
            return rec

    async def open_stream(self, options: StreamOptions) -> EmbeddedStream:
        rec = self._recognizer(resolve_decoder(self.decoder, options), options.endpoint_ms)
        return EmbeddedStream(self, rec, options)

    async def recognize(self, audio: np.ndarray, options: StreamOptions) -> TranscriptionResult:
        decoder = resolve_decoder(self.decoder, options)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._offline_thread, self._transcribe, audio, decoder, options.hotwords)

    async def recognize_nbest(self, audio: np.ndarray, options: StreamOptions) -> tuple[TranscriptionResult, list]:
        """``recognize``'s result, and up to ``options.alternatives`` hypotheses of the beam
        (distinct texts, best first; the first is the result's)."""
        decoder = resolve_decoder(self.decoder, options)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._offline_thread, self._transcribe, audio, decoder, options.hotwords,
                                          options.alternatives)

    def engine(self) -> Engine:
        """The whole-model Engine (model.onnx) of Recognize and of streams' full-context finals."""
        with self._lock:
            if self._engine is None:
                self._engine = Engine(self.model, EngineOptions(runtime=self.runtime, variant=self.precision))
            return self._engine

    def _transcribe(self, audio: np.ndarray, decoder: DecoderOptions, hotwords: tuple[str, ...],
                    alternatives: int = 0):
        t = self._transcribers.get(decoder)
        if t is None:
            t = self._transcribers[decoder] = Transcriber(engine=self.engine(), decoder=decoder)
        result = t.transcribe(audio, sample_rate=self.sample_rate, hotwords=list(hotwords) or None)
        if result.error:
            raise invalid_argument(result.error)
        if not alternatives:
            return result
        best = Transcript(result.text, tuple(result.words))
        if alternatives == 1 or decoder.method != BEAM:
            return result, [best]
        others = t.decoder.decode_nbest(self.engine().log_probs(audio), alternatives, hotwords=list(hotwords) or None)
        return result, [best] + [o for o in others if o.text != best.text][:alternatives - 1]

    @property
    def active_streams(self) -> int:
        """Streams holding state in the recognizers (the worker applies closes in order)."""
        return sum(r.active_streams for r in list(self._recognizers.values()))

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        self.worker.stop()
        self._offline_thread.shutdown(wait=False)
