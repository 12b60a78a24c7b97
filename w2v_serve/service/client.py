"""Python clients of ``w2v serve``: w2v.v1 (``RecognizerClient``) and Riva's API
(``RivaRecognizerClient``), with one interface; ``w2v stream`` uses them.

    from w2v_serve.service.client import RecognizerClient

    with RecognizerClient("127.0.0.1:50051", token="...") as client:
        for result in client.stream_file("call.wav", realtime=True, model="en"):
            print(result["is_final"], result["text"])
        print(client.recognize_file("call.wav")["text"])

Results are dicts shaped like the offline ones: ``{"is_final", "text", "stability", "start_s",
"end_s", "words": [{"word", "start_s", "end_s", "confidence"}]}``. Files are sent as FLOAT32 at
their own rate and channel count (the server averages channels and resamples, as ``w2v
transcribe`` does), so a 16 kHz file reaches the model exactly as offline transcription reads it.
The Riva client sends a WAV file whole (header first, as NVIDIA's scripts do), other files as
LINEAR_PCM.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import grpc
import numpy as np

from w2v_serve.service.proto import w2v_pb2 as pb
from w2v_serve.service.proto import w2v_pb2_grpc as pb_grpc
from w2v_serve.audio import read_audio
from w2v_serve.service.auth import bearer_metadata

_METHODS = {None: pb.DECODER_UNSPECIFIED, "greedy": pb.GREEDY, "beam": pb.BEAM}


class RecognizerError(RuntimeError):
    """The service ended a call with an error status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


def result_dict(r: pb.StreamingRecognitionResult) -> dict:
    return {"is_final": r.is_final, "text": r.transcript, "stability": round(r.stability, 3),
            "start_s": round(r.start_s, 3), "end_s": round(r.end_s, 3),
            "words": [{"word": w.word, "start_s": round(w.start_s, 3), "end_s": round(w.end_s, 3),
                       "confidence": round(w.confidence, 4)} for w in r.words]}


def final_text(results: Iterable[dict]) -> str:
    """The whole transcript: the finals' texts joined."""
    return " ".join(r["text"] for r in results if r["is_final"] and r["text"])


class RecognizerClient:
    def __init__(self, server: str, *, token: Optional[str] = None, tls: bool = False,
                 tls_ca: Optional[str] = None, timeout_s: Optional[float] = None) -> None:
        if tls or tls_ca:
            creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes() if tls_ca else None)
            self.channel = grpc.secure_channel(server, creds)
        else:
            self.channel = grpc.insecure_channel(server)
        self.stub = pb_grpc.RecognizerStub(self.channel)
        self.metadata = bearer_metadata(token)
        self.timeout_s = timeout_s

    def config(self, *, encoding: str = "FLOAT32", sample_rate: int = 16000, channels: int = 1,
               hotwords: Sequence[str] = (), decoder: Optional[str] = None, beam_width: int = 0,
               model: Optional[str] = None) -> pb.RecognitionConfig:
        return pb.RecognitionConfig(encoding=pb.AudioEncoding.Value(encoding), sample_rate_hz=sample_rate,
                                    audio_channel_count=channels, hotwords=list(hotwords),
                                    decoder=pb.DecoderConfig(method=_METHODS[decoder], beam_width=beam_width),
                                    model=model or "")

    # ------------------------------------------------------------------ streaming
    def stream(self, chunks: Iterable[bytes], config: pb.RecognitionConfig, *,
               interim_results: bool = True) -> Iterator[dict]:
        """Send the config then each chunk of encoded audio; yield results as they come."""
        def requests():
            yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
                config=config, interim_results=interim_results))
            for chunk in chunks:
                yield pb.StreamingRecognizeRequest(audio_content=bytes(chunk))

        call = self.stub.StreamingRecognize(requests(), metadata=self.metadata, timeout=self.timeout_s)
        try:
            for response in call:
                for r in response.results:
                    yield result_dict(r)
        except grpc.RpcError as e:
            raise RecognizerError(e.code(), e.details()) from None
        finally:
            call.cancel()   # a caller that stops iterating early frees the server's stream

    def stream_audio(self, audio: np.ndarray, sample_rate: int = 16000, *, chunk_ms: int = 100,
                     realtime: bool = False, **kwargs) -> Iterator[dict]:
        """A float32 array ([samples] or [samples, channels]) streamed in ``chunk_ms`` pieces."""
        audio = np.asarray(audio, dtype=np.float32)
        channels = 1 if audio.ndim == 1 else audio.shape[1]
        step = max(1, sample_rate * chunk_ms // 1000)
        pieces = (audio[i:i + step] for i in range(0, len(audio), step))
        interim = kwargs.pop("interim_results", True)
        config = self.config(encoding="FLOAT32", sample_rate=sample_rate, channels=channels, **kwargs)
        chunks = (np.ascontiguousarray(p, dtype="<f4").tobytes() for p in pieces)
        return self.stream(paced(chunks, chunk_ms / 1000) if realtime else chunks, config, interim_results=interim)

    def stream_file(self, path: str | Path, **kwargs) -> Iterator[dict]:
        """A file read by the project's one audio reader (``audio.read_audio``: AudioError for a
        file it refuses, before anything is sent) and streamed at its own rate and channels."""
        data, rate = read_audio(path)
        if data.shape[1] == 1:
            data = data[:, 0]
        return self.stream_audio(data, rate, **kwargs)

    # ------------------------------------------------------------------ whole audio
    def recognize(self, audio: np.ndarray, sample_rate: int = 16000, **kwargs) -> dict:
        audio = np.asarray(audio, dtype=np.float32)
        channels = 1 if audio.ndim == 1 else audio.shape[1]
        config = self.config(encoding="FLOAT32", sample_rate=sample_rate, channels=channels, **kwargs)
        try:
            r = self.stub.Recognize(pb.RecognizeRequest(config=config, audio_content=audio.astype("<f4").tobytes()),
                                    metadata=self.metadata, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise RecognizerError(e.code(), e.details()) from None
        return {"text": r.transcript, "duration_s": round(r.duration_s, 3),
                "words": [{"word": w.word, "start_s": round(w.start_s, 3), "end_s": round(w.end_s, 3),
                           "confidence": round(w.confidence, 4)} for w in r.words]}

    def recognize_file(self, path: str | Path, **kwargs) -> dict:
        data, rate = read_audio(path)
        return self.recognize(data[:, 0] if data.shape[1] == 1 else data, rate, **kwargs)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "RecognizerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def paced(chunks: Iterable[bytes], seconds_each: float) -> Iterator[bytes]:
    """Yield chunk k no earlier than k * seconds_each after the first: audio at playback speed."""
    start = time.monotonic()
    for k, chunk in enumerate(chunks):
        delay = start + k * seconds_each - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield chunk


# ---------------------------------------------------------------------------- Riva's API
RIVA_MISSING = "Riva's API needs the nvidia-riva-client package: pip install 'w2v[riva]'"


def _riva():
    try:
        from riva.client.proto import riva_asr_pb2, riva_asr_pb2_grpc
    except ImportError as e:
        raise ImportError(RIVA_MISSING) from e
    return riva_asr_pb2, riva_asr_pb2_grpc


def riva_result_dict(r, *, is_final: Optional[bool] = None) -> dict:
    """A Riva result (streaming or offline) as RecognizerClient's dict (times in seconds)."""
    alt = r.alternatives[0] if r.alternatives else None
    return {"is_final": r.is_final if is_final is None else is_final, "text": alt.transcript.strip() if alt else "",
            "stability": round(getattr(r, "stability", 1.0), 3), "end_s": round(r.audio_processed, 3),
            "words": [{"word": w.word, "start_s": w.start_time / 1000, "end_s": w.end_time / 1000,
                       "confidence": round(w.confidence, 4)} for w in (alt.words if alt else [])]}


class RivaRecognizerClient:
    """RecognizerClient's interface over Riva's RivaSpeechRecognition (riva.client's stubs)."""

    def __init__(self, server: str, *, token: Optional[str] = None, tls: bool = False,
                 tls_ca: Optional[str] = None, timeout_s: Optional[float] = None) -> None:
        self.rasr, rasr_grpc = _riva()
        if tls or tls_ca:
            creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes() if tls_ca else None)
            self.channel = grpc.secure_channel(server, creds)
        else:
            self.channel = grpc.insecure_channel(server)
        self.stub = rasr_grpc.RivaSpeechRecognitionStub(self.channel)
        self.metadata = bearer_metadata(token)
        self.timeout_s = timeout_s

    def config(self, *, encoding: int = 0, sample_rate: int = 0, channels: int = 0, hotwords: Sequence[str] = (),
               decoder: Optional[str] = None, beam_width: int = 0, model: Optional[str] = None,
               language_code: str = "", word_time_offsets: bool = True, boost: float = 4.0):
        """A Riva RecognitionConfig; hotwords go in one SpeechContext (as NVIDIA's scripts put
        them), decoder settings in custom_configuration."""
        config = self.rasr.RecognitionConfig(encoding=encoding, sample_rate_hertz=sample_rate,
                                             audio_channel_count=channels, language_code=language_code,
                                             model=model or "", max_alternatives=1, verbatim_transcripts=True,
                                             enable_word_time_offsets=word_time_offsets)
        if hotwords:
            config.speech_contexts.add(phrases=list(hotwords), boost=boost)
        if decoder:
            config.custom_configuration["decoder"] = decoder
        if beam_width:
            config.custom_configuration["beam_width"] = str(beam_width)
        return config

    def _file(self, path: str | Path, chunk_ms: int) -> tuple[list[bytes], dict]:
        """A WAV file's bytes as the scripts send them (header in the first chunk, no format set);
        other files decoded to 16-bit LINEAR_PCM with their rate and channels."""
        import soundfile as sf

        audio, rate = read_audio(path)   # the project's one reader: a refused file fails here
        info = sf.info(str(path))
        if info.format == "WAV":
            data = Path(path).read_bytes()
            frame = max(1, info.channels * 2)
            step = max(frame, info.samplerate * chunk_ms // 1000 * frame)
            return [data[i:i + step] for i in range(0, len(data), step)], {}
        audio = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
        step = max(1, rate * chunk_ms // 1000)
        pieces = [audio[i:i + step].tobytes() for i in range(0, len(audio), step)]
        return pieces, {"encoding": 1, "sample_rate": rate, "channels": audio.shape[1]}

    def stream(self, chunks: Iterable[bytes], config, *, interim_results: bool = True) -> Iterator[dict]:
        rasr = self.rasr

        def requests():
            yield rasr.StreamingRecognizeRequest(streaming_config=rasr.StreamingRecognitionConfig(
                config=config, interim_results=interim_results))
            for chunk in chunks:
                yield rasr.StreamingRecognizeRequest(audio_content=bytes(chunk))

        call = self.stub.StreamingRecognize(requests(), metadata=self.metadata, timeout=self.timeout_s)
        try:
            for response in call:
                for r in response.results:
                    yield riva_result_dict(r)
        except grpc.RpcError as e:
            raise RecognizerError(e.code(), e.details()) from None
        finally:
            call.cancel()

    def stream_file(self, path: str | Path, *, chunk_ms: int = 100, realtime: bool = False,
                    interim_results: bool = True, **kwargs) -> Iterator[dict]:
        chunks, fmt = self._file(path, chunk_ms)
        config = self.config(**fmt, **kwargs)
        return self.stream(paced(chunks, chunk_ms / 1000) if realtime else chunks, config,
                           interim_results=interim_results)

    def recognize_file(self, path: str | Path, **kwargs) -> dict:
        chunks, fmt = self._file(path, 1000)
        config = self.config(**fmt, **kwargs)
        try:
            r = self.stub.Recognize(self.rasr.RecognizeRequest(config=config, audio=b"".join(chunks)),
                                    metadata=self.metadata, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise RecognizerError(e.code(), e.details()) from None
        parts = [riva_result_dict(res, is_final=True) for res in r.results]
        return {"text": " ".join(p["text"] for p in parts if p["text"]),
                "duration_s": max((p["end_s"] for p in parts), default=0.0),
                "words": [w for p in parts for w in p["words"]]}

    def list_models(self) -> list[dict]:
        """GetRivaSpeechRecognitionConfig: {"model", "type", "language_code", ...} per model and mode."""
        response = self.stub.GetRivaSpeechRecognitionConfig(self.rasr.RivaSpeechRecognitionConfigRequest(),
                                                            timeout=self.timeout_s)
        return [{"model": c.model_name, **dict(c.parameters)} for c in response.model_config]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "RivaRecognizerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_client(protocol: str, server: str, **kwargs):
    """RecognizerClient ("w2v") or RivaRecognizerClient ("riva")."""
    if protocol == "riva":
        return RivaRecognizerClient(server, **kwargs)
    if protocol != "w2v":
        raise ValueError(f"unknown protocol {protocol!r}: w2v or riva")
    return RecognizerClient(server, **kwargs)
