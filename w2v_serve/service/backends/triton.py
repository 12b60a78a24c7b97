"""The Triton backend: streams are forwarded to one or more Triton servers.

Scale-out is Triton's: each stream is pinned to one server for its life (its sequence state -
audio window, open segment - lives in that server's ``streaming`` model under the stream's
sequence id), new streams go to the server in rotation with the fewest open streams, and a server
that stops answering (a request fails with UNAVAILABLE or times out, or the periodic readiness
check fails) leaves the rotation at once: its open streams end with UNAVAILABLE on their next
chunk (the client retries and lands elsewhere), new ones go to the others, and the next readiness
check that passes puts it back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import grpc
import numpy as np

from w2v_serve.decoding import Transcript
from w2v_serve.service.backends import StreamOptions
from w2v_serve.service.errors import ServiceError, invalid_argument, unavailable
from w2v_serve.streaming import StreamResult
from w2v_serve.transcribe import TranscriptionResult
from w2v_serve.triton.client import TritonClientError, TritonOfflineClient, TritonStream

log = logging.getLogger("w2v.serve")
STREAMING_MODEL = "streaming"
# Statuses of a Triton request that mean "the server is not answering", not "the request was bad".
_SERVER_GONE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


@dataclass
class TritonServerState:
    url: str
    open_streams: int = 0
    up: bool = True
    reason: str = ""


class TritonPool:
    """The Triton servers, their load (open streams) and whether each is in rotation."""

    def __init__(self, urls: Sequence[str], *, check_interval_s: float = 2.0, timeout_s: float = 5.0,
                 on_change: Optional[Callable[[int], None]] = None) -> None:
        if not urls:
            raise ValueError("no Triton server URL")
        self.servers = [TritonServerState(u) for u in dict.fromkeys(urls)]
        self.timeout_s = timeout_s
        self._on_change = on_change
        self._lock = threading.Lock()
        self._clients: dict[str, object] = {}
        for s in self.servers:
            self._check(s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(check_interval_s,), name="w2v-triton-health",
                                        daemon=True)
        self._thread.start()

    @property
    def up_count(self) -> int:
        return sum(s.up for s in self.servers)

    def acquire(self) -> TritonServerState:
        with self._lock:
            candidates = [s for s in self.servers if s.up]
            if not candidates:
                reasons = "; ".join(f"{s.url}: {s.reason}" for s in self.servers)
                raise unavailable(f"no Triton server is answering ({reasons})")
            best = min(candidates, key=lambda s: s.open_streams)
            best.open_streams += 1
            return best

    def release(self, server: TritonServerState) -> None:
        with self._lock:
            server.open_streams = max(0, server.open_streams - 1)

    def mark_down(self, server: TritonServerState, reason: str) -> None:
        with self._lock:
            was_up, server.up, server.reason = server.up, False, reason
        if was_up:
            log.warning("Triton %s out of rotation: %s", server.url, reason)
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.up_count)

    def _check(self, server: TritonServerState) -> None:
        import tritonclient.grpc as grpcclient

        try:
            client = self._clients.get(server.url)
            if client is None:
                client = self._clients[server.url] = grpcclient.InferenceServerClient(server.url)
            ready = client.is_model_ready(STREAMING_MODEL, client_timeout=self.timeout_s)
            reason = "" if ready else f"model {STREAMING_MODEL!r} not ready"
        except Exception as e:
            ready, reason = False, f"readiness check failed: {getattr(e, 'message', lambda: str(e))() or e}"
        if ready and not server.up:
            log.warning("Triton %s back in rotation", server.url)
            with self._lock:
                server.up, server.reason = True, ""
            self._changed()
        elif not ready:
            self.mark_down(server, reason)

    def _watch(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            for s in self.servers:
                self._check(s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 1)


def _server_gone(error: TritonClientError) -> bool:
    status = getattr(error.__cause__, "status", lambda: "")() or ""
    return any(code in status for code in _SERVER_GONE)


class TritonBackendStream:
    def __init__(self, backend: "TritonBackend", server: TritonServerState, options: StreamOptions) -> None:
        self._backend, self.server, self._options = backend, server, options
        # Unique across w2v services sharing a Triton server: a random 63-bit sequence id.
        self.stream = TritonStream(server.url, secrets.randbits(63) or 1, hotwords=options.hotwords,
                                   timeout_s=backend.request_timeout_s)
        self.description = f"triton {server.url}"
        self._open = True
        self._sent = False
        self.compute_s = 0.0

    def check(self) -> None:
        """UNAVAILABLE as soon as the pinned server left the rotation (its sequence state is lost)."""
        if self.server is not None and not self.server.up:
            self._open = False
            raise unavailable(f"Triton server {self.server.url} stopped answering ({self.server.reason}); "
                              "open a new stream")

    async def send(self, audio: np.ndarray, *, end: bool, budget_s: float = math.inf) -> list[StreamResult]:
        self.check()
        loop = asyncio.get_running_loop()
        self._sent = True

        def run():
            started = time.perf_counter()
            try:
                return self.stream.send(audio, end=end)
            finally:
                self.compute_s += time.perf_counter() - started    # the Triton request's time
        try:
            results = await loop.run_in_executor(self._backend.executor, run)
        except TritonClientError as e:
            self._open = False
            if _server_gone(e):
                self._backend.pool.mark_down(self.server, str(e))
                raise unavailable(f"Triton server {self.server.url} stopped answering: {e}") from None
            raise ServiceError(grpc.StatusCode.INTERNAL, f"Triton server {self.server.url}: {e}") from None
        if end:
            self._open = False
        results = [StreamResult.from_dict(r) for r in results]
        if not self._options.interim_results:
            results = [r for r in results if r.is_final]
        return results

    def close(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        if self._open and self._sent and server.up:
            # End the sequence so Triton frees its state now, not after its idle timeout.
            asyncio.get_running_loop().run_in_executor(self._backend.executor, self._end_quietly)
        self._open = False
        self._backend.pool.release(server)

    def _end_quietly(self) -> None:
        try:
            self.stream.send(np.zeros(0, np.float32), end=True)
        except Exception:
            pass


class TritonBackend:
    name = "triton"
    sample_rate = 16000          # the streaming and offline models take 16 kHz audio

    def __init__(self, urls: Sequence[str], *, max_streams: int = 64, check_interval_s: float = 2.0,
                 request_timeout_s: float = 10.0, on_change: Optional[Callable[[int], None]] = None,
                 local_server=None) -> None:
        self.request_timeout_s = request_timeout_s
        self.executor = ThreadPoolExecutor(max_streams + 4, thread_name_prefix="w2v-triton")
        self.pool = TritonPool(urls, check_interval_s=check_interval_s, timeout_s=min(5.0, request_timeout_s),
                               on_change=on_change)
        self.local_server = local_server     # a TritonServer this service started, stopped on close
        self._offline: dict[str, TritonOfflineClient] = {}

    async def open_stream(self, options: StreamOptions) -> TritonBackendStream:
        """End pointing is the repository's (``endpoint_ms`` of a request is not applied)."""
        if self.local_server is not None and not self.local_server.running:
            raise unavailable("the local tritonserver stopped and is being restarted; retry shortly")
        if options.method or options.beam_width or options.alpha is not None or options.beta is not None:
            raise invalid_argument("the triton backend decodes with the repository's streaming decoder; "
                                   "per-stream decoder settings are not supported (leave decoder unset)")
        return TritonBackendStream(self, self.pool.acquire(), options)

    async def recognize(self, audio: np.ndarray, options: StreamOptions) -> TranscriptionResult:
        if options.alpha is not None or options.beta is not None:
            raise invalid_argument("the triton backend's offline model decodes with the repository's LM weights; "
                                   "per-request alpha and beta are not supported")
        server = self.pool.acquire()
        loop = asyncio.get_running_loop()

        def run() -> TranscriptionResult:
            client = self._offline.get(server.url)
            if client is None:
                client = self._offline[server.url] = TritonOfflineClient(server.url)
            d = client.transcribe(audio, decoder=options.method, beam_width=options.beam_width or None,
                                  hotwords=options.hotwords)
            tr = Transcript.from_dict(d)
            return TranscriptionResult(None, tr.text, tr.words, d.get("duration_s", len(audio) / self.sample_rate))
        try:
            return await loop.run_in_executor(self.executor, run)
        except TritonClientError as e:
            if _server_gone(e) or "cannot reach" in str(e):
                self.pool.mark_down(server, str(e))
                raise unavailable(f"Triton server {server.url} stopped answering: {e}") from None
            raise invalid_argument(f"Triton server {server.url}: {e}") from None
        finally:
            self.pool.release(server)

    @property
    def active_streams(self) -> int:
        return sum(s.open_streams for s in self.pool.servers)

    def healthy(self) -> bool:
        """Some Triton server in rotation (a local one this service started also running)."""
        if self.local_server is not None and not self.local_server.running:
            return False
        return self.pool.up_count > 0

    def close(self) -> None:
        self.pool.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.local_server is not None:
            self.local_server.stop()
