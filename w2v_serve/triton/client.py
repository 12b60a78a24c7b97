"""Client side of the Triton repository: offline transcription and streaming sequences over gRPC."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from w2v_serve.decoding import Transcript


class TritonClientError(RuntimeError):
    """The server refused a request or cannot be reached; the message is the server's."""


def _client(url: str):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url)


def _check_ready(client, url: str, model: str) -> None:
    try:
        ready = client.is_model_ready(model)
    except Exception as e:
        raise TritonClientError(f"cannot reach Triton at {url}: {e}") from e
    if not ready:
        raise TritonClientError(f"Triton at {url} has no ready model {model!r}")


class TritonOfflineClient:
    """Whole recordings to the ``offline`` model; thread-safe."""

    def __init__(self, url: str, model: str = "offline", timeout_s: float = 600.0) -> None:
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self._local = threading.local()
        _check_ready(self._get(), url, model)

    def _get(self):
        if not hasattr(self._local, "client"):
            self._local.client = _client(self.url)
        return self._local.client

    def transcribe(self, audio: np.ndarray, *, decoder: Optional[str] = None, beam_width: Optional[int] = None,
                   hotwords: Sequence[str] = ()) -> dict:
        """16 kHz float32 mono -> {"text", "duration_s", "words": [...]} as the server returns it."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        inputs = [grpcclient.InferInput("audio", [len(audio)], "FP32")]
        inputs[0].set_data_from_numpy(audio)
        options = {k: v for k, v in (("decoder", decoder), ("beam_width", beam_width),
                                     ("hotwords", list(hotwords))) if v}
        if options:
            opt = grpcclient.InferInput("options", [1], "BYTES")
            opt.set_data_from_numpy(np.array([json.dumps(options).encode()], dtype=np.object_))
            inputs.append(opt)
        try:
            result = self._get().infer(self.model, inputs, client_timeout=self.timeout_s)
        except InferenceServerException as e:
            raise TritonClientError(e.message() or str(e)) from e
        return json.loads(result.as_numpy("transcript")[0])


@dataclass
class TritonStream:
    """One streaming sequence on the ``streaming`` model (sequence id = correlation id)."""

    url: str
    sequence_id: int
    model: str = "streaming"
    hotwords: Sequence[str] = ()
    timeout_s: Optional[float] = None   # per request; a server that stops answering raises

    def __post_init__(self) -> None:
        self._client = _client(self.url)
        self._started = False
        self.active: Optional[int] = None   # sequences the server held after the last request

    def send(self, audio: np.ndarray, *, end: bool = False) -> list[dict]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)
        inputs = [grpcclient.InferInput("AUDIO", list(audio.shape), "FP32")]
        inputs[0].set_data_from_numpy(audio)
        if not self._started and self.hotwords:
            opt = grpcclient.InferInput("OPTIONS", [1, 1], "BYTES")
            opt.set_data_from_numpy(np.array([[json.dumps({"hotwords": list(self.hotwords)}).encode()]], dtype=np.object_))
            inputs.append(opt)
        try:
            result = self._client.infer(self.model, inputs, sequence_id=self.sequence_id,
                                        sequence_start=not self._started, sequence_end=end,
                                        client_timeout=self.timeout_s)
        except InferenceServerException as e:
            raise TritonClientError(e.message() or str(e)) from e
        self._started = True
        self.active = int(result.as_numpy("ACTIVE").reshape(-1)[0])
        return json.loads(result.as_numpy("RESULTS").reshape(-1)[0])


class TritonTranscriber:
    """``Transcriber``'s file interface over the ``offline`` model: files are read here (the one
    audio loader), sent concurrently (the server batches them), results come back in input order;
    a file that fails gets a result with ``error`` and the others go on."""

    def __init__(self, url: str, *, decoder: Optional[str] = None, beam_width: Optional[int] = None,
                 hotwords: Sequence[str] = (), concurrency: int = 4) -> None:
        self.client = TritonOfflineClient(url)
        self.options = dict(decoder=decoder, beam_width=beam_width, hotwords=tuple(hotwords))
        self.concurrency = max(1, concurrency)

    def _one(self, path) -> "TranscriptionResult":
        return self.transcribe_file(path)

    def transcribe_file(self, path) -> "TranscriptionResult":
        """One file, read here (the one audio loader); its error as a result."""
        from w2v_serve.audio import SAMPLE_RATE, AudioError, load_audio
        from w2v_serve.transcribe import TranscriptionResult

        try:
            audio = load_audio(path, SAMPLE_RATE)
        except AudioError as e:
            return TranscriptionResult(str(path), error=str(e))
        return self.transcribe_audio(path, audio)

    def transcribe_audio(self, path, audio: np.ndarray) -> "TranscriptionResult":
        """One file's samples (16 kHz mono float32), sent to the server; its error as a result."""
        from w2v_serve.audio import SAMPLE_RATE
        from w2v_serve.transcribe import TranscriptionResult

        try:
            d = self.client.transcribe(audio, **self.options)
        except TritonClientError as e:
            return TranscriptionResult(str(path), error=str(e))
        tr = Transcript.from_dict(d)
        return TranscriptionResult(str(path), tr.text, tr.words, d.get("duration_s", len(audio) / SAMPLE_RATE))

    def transcribe_iter(self, paths: Sequence, *, on_result=None):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.concurrency) as pool:
            # A bounded window of in-flight files keeps memory flat over thousands of inputs.
            pending = []
            it = iter(paths)
            for path in it:
                pending.append(pool.submit(self._one, path))
                if len(pending) >= 2 * self.concurrency:
                    break
            while pending:
                result = pending.pop(0).result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._one, nxt))
                if on_result:
                    on_result(result)
                yield result
