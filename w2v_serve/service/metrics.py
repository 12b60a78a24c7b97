"""Prometheus metrics of the gRPC service, in a registry of their own (so several services can
live in one process, as in tests), served over HTTP at ``/metrics``."""

from __future__ import annotations

from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Result latency: from the audio message's arrival to its results being written (partials), or
# from the end of the audio to the last final (end of stream). Real-time serving lives in 10 ms-2 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.streams_open = Gauge("w2v_streams_open", "Streaming recognitions open now", registry=r)
        self.streams = Counter("w2v_streams", "Streaming recognitions started", registry=r)
        self.audio_seconds = Counter("w2v_audio_seconds", "Seconds of audio received", ["rpc"], registry=r)
        self.latency = Histogram("w2v_result_latency_seconds", "Time from audio received to its results sent",
                                 ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.recognize_latency = Histogram("w2v_recognize_seconds", "Unary Recognize handling time",
                                           buckets=LATENCY_BUCKETS + (30.0, 60.0), registry=r)
        self.errors = Counter("w2v_errors", "RPCs ended with an error, by gRPC status code", ["code"], registry=r)
        self.backend_streams = Gauge("w2v_backend_streams", "Streams holding state in the backend (the "
                                     "in-process recognizer, or sequences open on Triton servers)", registry=r)
        self.backend_servers_up = Gauge("w2v_backend_servers_up", "Triton servers in rotation", registry=r)
        self._http = None

    def error(self, code) -> None:
        self.errors.labels(code=getattr(code, "name", str(code))).inc()

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics; returns the port (``port=0`` picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_address[1]

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
