"""The gRPC recognition service (``w2v serve``): w2v.v1.Recognizer over a backend.

One asyncio event loop handles every call; the model runs elsewhere (the embedded backend's
inference thread, or Triton), so a stream waiting for audio or for the model costs no thread.
Each stream has a reader task that moves requests into a small queue; the handler takes them
with a short timeout, which is what lets it end an idle stream (DEADLINE_EXCEEDED; the idle
clock runs only while the handler waits with nothing queued) and notice a backend server that
went away while the client is quiet. Audio goes through ``limits.AudioFeed``, which checks every
message against the stream's budgets before any work on it (``limits`` holds the limits all
protocol front-ends share; ``ServiceLimits`` is importable from here too). A client that vanishes cancels its
handler: the ``finally`` closes the backend stream at once.

Shutdown (SIGTERM, SIGINT): health turns NOT_SERVING, new calls get UNAVAILABLE, open streams
have the grace period to finish, then whatever is left is cancelled and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Optional, Sequence, Union

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from w2v_serve.audio import resample
from w2v_serve.decoding import Transcript, Word
from w2v_serve.hotwords import hotwords_problem
from w2v_serve.process import release_memory
from w2v_serve.service.auth import BearerTokenInterceptor
from w2v_serve.service.backends import Backend, StreamOptions
from w2v_serve.service.malformed import MalformedRequestInterceptor
from w2v_serve.service.limits import AudioFeed, ServiceLimits, StreamGuard, check_recording
from w2v_serve.service.pcm import AudioFormat, ChunkDecoder, ChunkError
from w2v_serve.service.proto import w2v_pb2 as pb
from w2v_serve.service.proto import w2v_pb2_grpc as pb_grpc
from w2v_serve.service.errors import ServiceError, invalid_argument, unavailable
from w2v_serve.service.metrics import ServiceMetrics
from w2v_serve.service.models import ModelRegistry
from w2v_serve.streaming import StreamResult
from w2v_serve.sessions import release_runtime_memory

log = logging.getLogger("w2v.serve")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recognizer"].full_name   # "w2v.v1.Recognizer"
_POLL_S = 0.25            # how often a waiting stream checks its idle time and its backend
_HEALTH_POLL_S = 0.5      # how often health checking asks the backend whether it can recognize
_MAX_BEAM_WIDTH, _MAX_ALTERNATIVES = 1024, 32
_METHODS = {pb.DECODER_UNSPECIFIED: None, pb.GREEDY: "greedy", pb.BEAM: "beam"}


# ---------------------------------------------------------------------------- config and results
def parse_config(config: pb.RecognitionConfig) -> tuple[AudioFormat, StreamOptions]:
    if config.encoding == pb.ENCODING_UNSPECIFIED:
        raise invalid_argument("config.encoding is required: LINEAR16 or FLOAT32")
    if config.encoding not in pb.AudioEncoding.values():
        raise invalid_argument(f"unknown audio encoding {config.encoding}; use LINEAR16 or FLOAT32")
    try:
        fmt = AudioFormat(pb.AudioEncoding.Name(config.encoding), config.sample_rate_hz,
                          config.audio_channel_count or 1)
    except ChunkError as e:
        raise invalid_argument(str(e)) from None
    if config.decoder.method not in _METHODS:
        raise invalid_argument(f"unknown decoder method {config.decoder.method}; use GREEDY or BEAM")
    if not 0 <= config.decoder.beam_width <= _MAX_BEAM_WIDTH:
        raise invalid_argument(f"decoder.beam_width must be in 0..{_MAX_BEAM_WIDTH}")
    if problem := hotwords_problem(config.hotwords):     # before any work on them
        raise invalid_argument(problem)
    hotwords = tuple(h.strip() for h in config.hotwords if h.strip())
    d = config.decoder
    for knob in ("alpha", "beta"):
        if d.HasField(knob) and not -100.0 <= getattr(d, knob) <= 100.0:
            raise invalid_argument(f"decoder.{knob} must be in -100..100")
    if config.endpoint_ms and not 20 <= config.endpoint_ms <= 10_000:
        raise invalid_argument("endpoint_ms must be in 20..10000 (0: the server's)")
    if not 0 <= config.max_alternatives <= _MAX_ALTERNATIVES:
        raise invalid_argument(f"max_alternatives must be in 0..{_MAX_ALTERNATIVES}")
    return fmt, StreamOptions(hotwords=hotwords, method=_METHODS[d.method], beam_width=d.beam_width,
                              alternatives=max(1, config.max_alternatives),
                              alpha=d.alpha if d.HasField("alpha") else None,
                              beta=d.beta if d.HasField("beta") else None,
                              endpoint_ms=config.endpoint_ms or None)


def _words(words: Sequence[Word]) -> list[pb.WordInfo]:
    return [pb.WordInfo(word=w.word, start_s=round(w.start_s, 3), end_s=round(w.end_s, 3),
                        confidence=round(w.confidence, 4)) for w in words]


def _alternative(t: Transcript) -> pb.Alternative:
    confidence = sum(w.confidence for w in t.words) / len(t.words) if t.words else 0.0
    return pb.Alternative(transcript=t.text, words=_words(t.words), confidence=round(confidence, 4))


def _result(r: StreamResult) -> pb.StreamingRecognitionResult:
    return pb.StreamingRecognitionResult(is_final=r.is_final, transcript=r.text, stability=round(r.stability, 3),
                                         words=_words(r.transcript.words), start_s=round(r.start_s, 3),
                                         end_s=round(r.end_s, 3))


# ---------------------------------------------------------------------------- the servicer
_EOF = object()


class _ClientGone(Exception):
    """The client cancelled or its connection closed: nothing to answer, only state to free."""


class RecognizerService(pb_grpc.RecognizerServicer):
    def __init__(self, models: ModelRegistry, limits: ServiceLimits, metrics: ServiceMetrics) -> None:
        self.models, self.limits, self.metrics = models, limits, metrics
        self.open_streams = 0
        self.draining = False
        self._none_open: Optional[asyncio.Event] = None

    # -------------------------------------------------------------- StreamingRecognize
    async def StreamingRecognize(self, request_iterator, context):
        try:
            await self._streaming(request_iterator, context)
            return
        except ServiceError as e:
            error = e
        except ChunkError as e:
            error = invalid_argument(str(e))
        except (asyncio.CancelledError, _ClientGone) as e:
            self.metrics.error(grpc.StatusCode.CANCELLED)     # the client went away
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        except Exception as e:  # a bug: the client gets INTERNAL, the log gets the traceback
            log.exception("stream failed")
            error = ServiceError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        self.metrics.error(error.code)
        await context.abort(error.code, error.message)

    def _admit(self) -> None:
        if self.draining:
            raise unavailable("the server is shutting down; retry on another instance")
        if self.open_streams >= self.limits.max_streams:
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"too many streams: this server takes {self.limits.max_streams} at once")

    async def _streaming(self, request_iterator, context) -> None:
        self._admit()
        self.open_streams += 1
        self.metrics.streams_open.inc()
        self.metrics.streams.inc()
        requests: asyncio.Queue = asyncio.Queue(maxsize=32)   # bounded: a fast sender waits
        reader = asyncio.create_task(self._read(request_iterator, requests, context))
        # A client that vanishes ends the handler at once, wherever it waits (the model included).
        handler = asyncio.current_task()
        context.add_done_callback(lambda ctx: handler.cancel() if ctx.cancelled() and not handler.done() else None)
        stream = None
        guard = StreamGuard(self.limits)    # budgets, and the idle clock: the client's silence only
        leases = AsyncExitStack()
        try:
            async def next_request():
                guard.begin_wait()
                try:
                    while True:
                        guard.check_waiting()
                        try:
                            item = await asyncio.wait_for(requests.get(), min(_POLL_S, max(0.01, guard.idle_left())))
                        except asyncio.TimeoutError:
                            if stream is not None:
                                stream_check(stream)
                            continue
                        if isinstance(item, BaseException):
                            raise item
                        return item
                finally:
                    guard.end_wait()

            first, _ = await next_request()
            if first is _EOF:
                raise invalid_argument("the stream ended before its config")
            if not first.HasField("streaming_config"):
                raise invalid_argument("the first request must carry streaming_config (audio came before the config)")
            fmt, options = parse_config(first.streaming_config.config)
            options = replace(options, interim_results=first.streaming_config.interim_results)
            name = self.models.resolve(first.streaming_config.config.model or None)
            backend = await leases.enter_async_context(self.models.lease(name))
            stream = await backend.open_stream(options)
            feed = AudioFeed(stream, fmt, backend.sample_rate, guard)
            while True:
                request, arrived = await next_request()
                if request is _EOF:
                    results = await feed.finish()
                    await self._write(context, results, arrived)
                    return
                if request.HasField("streaming_config"):
                    raise invalid_argument("streaming_config may only be sent once, first")
                data = request.audio_content
                results = await feed.feed(data)
                self.metrics.audio_seconds.labels(rpc="streaming").inc(fmt.seconds(len(data)))
                await self._write(context, results, arrived)
        finally:
            reader.cancel()
            if stream is not None:
                stream.close()       # not awaited: nothing may interrupt the bookkeeping below
            await leases.aclose()    # releases the model (no await inside: cancellation-safe)
            self.open_streams -= 1
            self.metrics.streams_open.dec()
            if self.open_streams == 0:
                release_runtime_memory()  # OpenVINO's intermediate buffers, sized for the longest run
                release_memory()     # the streams' buffers go back to the system, not to malloc's pools
                if self._none_open is not None:
                    self._none_open.set()

    @staticmethod
    async def _read(request_iterator, requests: asyncio.Queue, context) -> None:
        try:
            async for request in request_iterator:
                await requests.put((request, time.monotonic()))
            # The requests also end when the client cancels: that is not an end of audio.
            await requests.put(_ClientGone() if context.cancelled() else (_EOF, time.monotonic()))
        except asyncio.CancelledError:
            raise
        except ServiceError as e:  # a malformed message (malformed.py), or one a front-end's translation
            # of its requests (riva.py) refused: the client's error, as it is
            await requests.put(e)
        except Exception as e:   # the call broke: the handler sees it on its next take
            await requests.put(_ClientGone() if context.cancelled() else unavailable(f"reading the stream failed: {e}"))

    async def _write(self, context, results: list[StreamResult], arrived: float) -> None:
        if not results:
            return
        try:
            await context.write(pb.StreamingRecognizeResponse(results=[_result(r) for r in results]))
        except Exception:
            # A write fails only when the call is over from under us: the client cancelled or its
            # connection closed (which can look like an end of audio to the reader just before).
            raise _ClientGone() from None
        latency = time.monotonic() - arrived
        for kind in {("final" if r.is_final else "partial") for r in results}:
            self.metrics.latency.labels(kind=kind).observe(latency)

    # -------------------------------------------------------------- Recognize
    async def Recognize(self, request: pb.RecognizeRequest, context) -> pb.RecognizeResponse:
        start = time.monotonic()
        try:
            if self.draining:
                raise unavailable("the server is shutting down; retry on another instance")
            fmt, options = parse_config(request.config)
            if not request.audio_content:
                raise invalid_argument("audio_content is empty")
            check_recording(fmt, len(request.audio_content), self.limits)
            name = self.models.resolve(request.config.model or None)
            async with self.models.lease(name) as backend:
                # Decoded and downmixed, then resampled in one piece as `w2v transcribe` reads a file.
                audio = resample(ChunkDecoder(fmt, fmt.sample_rate).decode(request.audio_content),
                                 fmt.sample_rate, backend.sample_rate)
                self.metrics.audio_seconds.labels(rpc="recognize").inc(fmt.seconds(len(request.audio_content)))
                alternatives = None
                if options.alternatives > 1 and hasattr(backend, "recognize_nbest"):
                    result, alternatives = await backend.recognize_nbest(audio, options)
                else:
                    result = await backend.recognize(audio, options)
        except (ServiceError, ChunkError) as e:
            error = e if isinstance(e, ServiceError) else invalid_argument(str(e))
            self.metrics.error(error.code)
            await context.abort(error.code, error.message)
        self.metrics.recognize_latency.observe(time.monotonic() - start)
        if alternatives is None:
            alternatives = [Transcript(result.text, tuple(result.words))]
        return pb.RecognizeResponse(transcript=result.text, words=_words(result.words),
                                    duration_s=round(result.duration_s, 3),
                                    alternatives=[_alternative(a) for a in alternatives])

    # -------------------------------------------------------------- shutdown
    async def wait_until_none_open(self, timeout_s: float) -> bool:
        self._none_open = asyncio.Event()
        if self.open_streams == 0:
            return True
        try:
            await asyncio.wait_for(self._none_open.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False


def _health_status(serving: bool):
    return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING


def stream_check(stream) -> None:
    check = getattr(stream, "check", None)
    if check is not None:
        check()


# ---------------------------------------------------------------------------- the server
class RecognitionServer:
    """The gRPC server with the recognizer, health checking, reflection, auth and metrics."""

    def __init__(self, models: Union[ModelRegistry, Backend], *, host: str = "127.0.0.1", port: int = 0,
                 limits: ServiceLimits = ServiceLimits(), auth_token: Optional[str] = None,
                 tls: Optional[tuple[bytes, bytes]] = None, metrics_port: Optional[int] = None,
                 grace_period_s: float = 30.0, riva: Optional[bool] = None) -> None:
        """models: the served models (a single Backend is served as the model "default").
        riva: also answer nvidia.riva.asr.RivaSpeechRecognition (None: when nvidia-riva-client
        is installed)."""
        if not isinstance(models, ModelRegistry):
            models = ModelRegistry.of_backend(models)
        self.models, self.host, self.requested_port = models, host, port
        self.limits, self.auth_token, self.tls = limits, auth_token, tls
        self.metrics = ServiceMetrics()
        self.metrics.backend_streams.set_function(lambda: models.active_streams)
        self.metrics_port_requested = metrics_port
        self.grace_period_s = grace_period_s
        self.service = RecognizerService(models, limits, self.metrics)
        self.riva = None
        if riva is None or riva:
            from w2v_serve.service import riva as riva_api

            if riva_api.available() or riva:
                self.riva = riva_api.RivaASRService(self.service)
        self.health = health.aio.HealthServicer()
        self.port: Optional[int] = None
        self.metrics_port: Optional[int] = None
        self._server: Optional[grpc.aio.Server] = None
        self._drain_task: Optional[asyncio.Task] = None
        self._health_task: Optional[asyncio.Task] = None
        self._serving = True
        # Health entries that follow the backend ("" is the server as a whole); front-ends that
        # add services on this server add their names.
        self.health_names: list[str] = ["", SERVICE_NAME]
        self._unloader: Optional[asyncio.Task] = None

    @property
    def backend(self) -> Optional[Backend]:
        """The default model's backend (loaded at start)."""
        return self.models.backend(self.models.default_name)

    async def start(self) -> int:
        interceptors = []
        if self.auth_token:
            interceptors.append(BearerTokenInterceptor(
                self.auth_token, on_reject=lambda: self.metrics.error(grpc.StatusCode.UNAUTHENTICATED)))
        interceptors.append(MalformedRequestInterceptor(
            on_reject=lambda: self.metrics.error(grpc.StatusCode.INVALID_ARGUMENT)))
        size = self.limits.max_message_bytes
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size),
            ("grpc.so_reuseport", 0)])
        await asyncio.get_running_loop().run_in_executor(None, self.models.start)
        pb_grpc.add_RecognizerServicer_to_server(self.service, server)
        services = [SERVICE_NAME]
        if self.riva is not None:
            services.append(self.riva.add_to_server(server))
            self.health_names.append(services[-1])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
        address = f"{self.host}:{self.requested_port}"
        if self.tls:
            cert, key = self.tls
            self.port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        self._serving = self.models.healthy()
        for name in self.health_names:
            await self.health.set(name, _health_status(self._serving))
        self._health_task = asyncio.ensure_future(self._watch_backend())
        self._unloader = asyncio.ensure_future(self.models.unload_idle_forever())
        if self.metrics_port_requested is not None:
            self.metrics_port = self.metrics.serve_http(self.metrics_port_requested, self.host)
        return self.port

    async def _watch_backend(self) -> None:
        """Health follows the backend: NOT_SERVING while it cannot recognize (no Triton server
        answering, the local tritonserver restarting), SERVING again once it can."""
        while not self.service.draining:
            await asyncio.sleep(_HEALTH_POLL_S)
            serving = bool(self.models.healthy())
            if serving != self._serving and not self.service.draining:
                self._serving = serving
                log.warning("backend %s: health %s", self.models.kind, "SERVING" if serving else "NOT_SERVING")
                for name in self.health_names:
                    await self.health.set(name, _health_status(serving))

    def drain(self) -> asyncio.Task:
        """Begin a graceful shutdown (idempotent); the task ends when the server has stopped."""
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())
        return self._drain_task

    async def _drain(self) -> None:
        self.service.draining = True
        for task in (self._health_task, self._unloader):
            if task is not None:
                task.cancel()
        await self.health.enter_graceful_shutdown()     # every service NOT_SERVING
        open_now = self.service.open_streams
        if open_now:
            log.info("draining %d open stream(s), up to %g s", open_now, self.grace_period_s)
        finished = await self.service.wait_until_none_open(self.grace_period_s)
        if not finished:
            log.warning("grace period over: cancelling %d stream(s)", self.service.open_streams)
        await self._server.stop(0)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    def close(self) -> None:
        self.metrics.close()
        self.models.close()


class ThreadedServer:
    """A RecognitionServer on an event loop of its own thread (tests, benchmarks, embedding)."""

    def __init__(self, models, **kwargs) -> None:
        self.server = RecognitionServer(models, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="w2v-service", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(60)

    @property
    def address(self) -> str:
        return f"{self.server.host}:{self.port}"

    @property
    def metrics(self) -> ServiceMetrics:
        return self.server.metrics

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the server's loop and return its result (reading service state)."""
        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def stop(self, grace_s: float = 0.0) -> None:
        self.server.grace_period_s = grace_s
        async def drain():
            await self.server.drain()
        asyncio.run_coroutine_threadsafe(drain(), self._loop).result(grace_s + 30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self.server.close()

    def __enter__(self) -> "ThreadedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
