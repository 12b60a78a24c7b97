"""Helpers for the gRPC service tests: a stream the test drives message by message, metric reads."""

from __future__ import annotations

import queue
import threading
import time
import urllib.request
from typing import Optional

import grpc
import numpy as np

from w2v_serve.service.client import result_dict
from w2v_serve.service.proto import w2v_pb2 as pb
from w2v_serve.service.proto import w2v_pb2_grpc as pb_grpc

_END = object()


def float32_config(sample_rate: int = 16000, interim: bool = True, **kw) -> pb.StreamingRecognizeRequest:
    cfg = pb.RecognitionConfig(encoding=pb.FLOAT32, sample_rate_hz=sample_rate, **kw)
    return pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(config=cfg, interim_results=interim))


def audio_request(audio: np.ndarray) -> pb.StreamingRecognizeRequest:
    return pb.StreamingRecognizeRequest(audio_content=np.asarray(audio, "<f4").tobytes())


class DrivenStream:
    """A StreamingRecognize call whose requests the test sends one at a time; responses are
    collected on a thread (with their arrival times) until the call ends."""

    def __init__(self, address: str, metadata=(), timeout: float = 60.0) -> None:
        self.channel = grpc.insecure_channel(address)
        self._requests: queue.Queue = queue.Queue()
        self.call = pb_grpc.RecognizerStub(self.channel).StreamingRecognize(
            iter(self._requests.get, _END), metadata=metadata, timeout=timeout)
        self.results: list[dict] = []
        self.arrivals: list[float] = []
        self.error: Optional[grpc.RpcError] = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                for r in response.results:
                    self.results.append(result_dict(r))
                    self.arrivals.append(time.monotonic())
        except grpc.RpcError as e:
            self.error = e

    def send(self, request) -> None:
        self._requests.put(request)

    def end(self) -> None:
        self._requests.put(_END)

    def wait(self, timeout: float = 30.0) -> "DrivenStream":
        self._reader.join(timeout)
        assert not self._reader.is_alive(), "the call did not end"
        return self

    @property
    def code(self) -> Optional[grpc.StatusCode]:
        return None if self.error is None else self.error.code()

    def close(self) -> None:
        self.channel.close()


def metric(port: int, name: str) -> float:
    """One sample's value from the service's /metrics (0 when absent)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if line.split(" ")[0] == name or "{" in name:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
