"""NVIDIA Riva's ASR API (``nvidia.riva.asr.RivaSpeechRecognition``) over the w2v service.

A thin adapter: each Riva call is translated into the w2v.v1 call it means and run by the same
``RecognizerService`` (so the same models, limits, idle timeout, drain, metrics and auth apply),
and each w2v.v1 result is translated back. The messages are Riva's own generated code, shipped in
the ``nvidia-riva-client`` wheel (``pip install 'w2v[riva]'``).

What each RecognitionConfig field does here is in docs/service.md; in short:

* audio: ``encoding`` LINEAR_PCM, MULAW, ALAW (headerless: ``sample_rate_hertz`` required),
  FLAC, OGGOPUS; a WAV file sent whole is read from its header when ``encoding`` is unset or
  LINEAR_PCM (``riva_audio``); any rate, any channel count (averaged).
* ``model`` / ``language_code`` pick a served model (``ModelRegistry.resolve``).
* ``speech_contexts``: phrases with a positive boost become hotwords (beam search).
* ``custom_configuration``: ``decoder`` (greedy|beam), ``beam_width``/``beam_size``,
  ``lm_weight``/``alpha``, ``word_insertion_score``/``beta``.
* ``endpointing_config.stop_history`` (ms): the pause that ends a segment.
* ``enable_word_time_offsets``: words with start/end in milliseconds and a confidence.
* final transcripts end with a space, as Riva's do (results are concatenated by its clients).
* ``max_alternatives``: Recognize returns up to that many hypotheses of the beam (distinct texts,
  best first); streaming results have one.
* accepted and without effect: ``profanity_filter``, ``enable_automatic_punctuation``,
  ``verbatim_transcripts`` (transcripts are always verbatim), ``enable_separate_recognition_per_channel``
  (channels are averaged), ``runtime_config``; refused: speaker diarization, negative boosts.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import AsyncIterator, Optional

import grpc

from w2v_serve.service.errors import ServiceError, invalid_argument, unavailable
from w2v_serve.service.pcm import ChunkError
from w2v_serve.service.proto import w2v_pb2 as pb
from w2v_serve.service.riva_audio import RivaAudio

try:
    from riva.client.proto import riva_asr_pb2 as rasr
    from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc
except ImportError:      # the 'riva' extra is not installed
    rasr = rasr_grpc = None

log = logging.getLogger("w2v.serve")
MISSING = "NVIDIA Riva's API needs the nvidia-riva-client package: pip install 'w2v[riva]'"
SERVICE_NAME = "nvidia.riva.asr.RivaSpeechRecognition"
_MAX_HOTWORDS, _MAX_ALTERNATIVES = 256, 32
_DECODERS = {"greedy": pb.GREEDY, "beam": pb.BEAM}


def available() -> bool:
    return rasr is not None


# ---------------------------------------------------------------------------- config translation
def _custom(config) -> pb.DecoderConfig:
    """custom_configuration -> the w2v decoder config (unknown keys are ignored, as Riva does)."""
    decoder = pb.DecoderConfig()
    for key, value in config.custom_configuration.items():
        k = key.strip().lower()
        try:
            if k == "decoder":
                if value.strip().lower() not in _DECODERS:
                    raise invalid_argument(f"custom_configuration decoder={value!r}: use greedy or beam")
                decoder.method = _DECODERS[value.strip().lower()]
            elif k in ("beam_width", "beam_size"):
                decoder.beam_width = int(value)
            elif k in ("lm_weight", "alpha"):
                decoder.alpha = _finite(value)
            elif k in ("word_insertion_score", "beta"):
                decoder.beta = _finite(value)
        except ValueError:
            raise invalid_argument(f"custom_configuration {key}={value!r} is not a number") from None
    return decoder


def _finite(value: str) -> float:
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(value)
    return x


def _hotwords(config) -> list[str]:
    words: list[str] = []
    for context in config.speech_contexts:
        if context.boost < 0:
            raise invalid_argument("negative boosting (suppressing phrases) is not supported; use a positive boost")
        if context.boost > 0:
            words.extend(p.strip() for p in context.phrases if p.strip())
    if len(words) > _MAX_HOTWORDS:
        raise invalid_argument(f"at most {_MAX_HOTWORDS} boosted phrases")
    return words


def _endpoint_ms(config) -> int:
    if not config.HasField("endpointing_config"):
        return 0
    e = config.endpointing_config
    ms = e.stop_history or e.stop_history_eou
    if ms and not 20 <= ms <= 10_000:
        raise invalid_argument("endpointing_config.stop_history must be in 20..10000 ms")
    return ms


def w2v_config(config, model: str, layout_encoding: str, sample_rate: int, channels: int) -> pb.RecognitionConfig:
    """A Riva RecognitionConfig (already checked) as the w2v.v1 config of its audio."""
    decoder = _custom(config)
    return pb.RecognitionConfig(encoding=pb.AudioEncoding.Value(layout_encoding), sample_rate_hz=sample_rate,
                                audio_channel_count=channels, hotwords=_hotwords(config), decoder=decoder,
                                model=model, endpoint_ms=_endpoint_ms(config),
                                max_alternatives=min(config.max_alternatives, _MAX_ALTERNATIVES))


def check_config(config, models) -> str:
    """Refuse what cannot be honoured; the served model the config picks."""
    if config.HasField("diarization_config") and config.diarization_config.enable_speaker_diarization:
        raise invalid_argument("speaker diarization is not available on this server")
    if config.max_alternatives < 0:
        raise invalid_argument("max_alternatives must not be negative")
    _custom(config)
    _hotwords(config)
    _endpoint_ms(config)
    return models.resolve(config.model or None, config.language_code or None)


# ---------------------------------------------------------------------------- results
def _alternative(transcript: str, words, *, final: bool, word_times: bool, language: str):
    text = transcript + " " if final and transcript else transcript
    confidence = (sum(w.confidence for w in words) / len(words)) if (final and words) else 0.0
    alt = rasr.SpeechRecognitionAlternative(transcript=text, confidence=confidence, language_code=[language])
    if word_times:
        alt.words.extend(rasr.WordInfo(word=w.word, start_time=int(round(w.start_s * 1000)),
                                       end_time=int(round(w.end_s * 1000)), confidence=w.confidence,
                                       language_code=language) for w in words)
    return alt


class _StreamContext:
    """The Riva call's context as the w2v.v1 handler uses it: results written are translated."""

    def __init__(self, context, word_times: bool, language: str) -> None:
        self._context, self._word_times, self._language = context, word_times, language

    async def write(self, response: pb.StreamingRecognizeResponse) -> None:
        # A partial followed by a final of the same segment in one response is superseded: Riva's
        # clients would print it after the final.
        last_final = max((i for i, r in enumerate(response.results) if r.is_final), default=-1)
        kept = [r for i, r in enumerate(response.results) if r.is_final or i > last_final]
        results = [rasr.StreamingRecognitionResult(
            alternatives=[_alternative(r.transcript, r.words, final=r.is_final, word_times=self._word_times,
                                       language=self._language)],
            is_final=r.is_final, stability=r.stability, channel_tag=1, audio_processed=r.end_s)
            for r in kept]
        await self._context.write(rasr.StreamingRecognizeResponse(results=results))

    def __getattr__(self, name):
        return getattr(self._context, name)


# ---------------------------------------------------------------------------- the servicer
class RivaASRService(rasr_grpc.RivaSpeechRecognitionServicer if rasr_grpc else object):
    """Riva's RivaSpeechRecognition over a w2v ``RecognizerService``."""

    def __init__(self, w2v) -> None:
        if rasr is None:
            raise RuntimeError(MISSING)
        self.w2v = w2v                      # the RecognizerService: models, limits, metrics

    def add_to_server(self, server) -> str:
        rasr_grpc.add_RivaSpeechRecognitionServicer_to_server(self, server)
        return SERVICE_NAME

    async def _fail(self, context, error: ServiceError) -> None:
        self.w2v.metrics.error(error.code)
        await context.abort(error.code, error.message)

    # -------------------------------------------------------------- GetRivaSpeechRecognitionConfig
    async def GetRivaSpeechRecognitionConfig(self, request, context):
        """A Config per served model and mode (online = streaming, offline = Recognize)."""
        models = self.w2v.models
        infos = models.describe()
        if request.model_name:
            infos = [i for i in infos if i.name == request.model_name]
            if not infos:
                await self._fail(context, invalid_argument(
                    f"model {request.model_name!r} is not served here; served: {models.served()}"))
        response = rasr.RivaSpeechRecognitionConfigResponse()
        for info in infos:
            for mode, supported in (("online", info.streaming), ("offline", info.offline)):
                if not supported:
                    continue
                response.model_config.add(model_name=info.name, parameters={
                    "type": mode, "language_code": info.language_code, "sample_rate": str(info.sample_rate),
                    "streaming": "true" if mode == "online" else "false", "default": str(info.default).lower(),
                    "backend": models.kind, "loaded": str(info.loaded).lower()})
        return response

    # -------------------------------------------------------------- Recognize
    async def Recognize(self, request, context):
        try:
            if self.w2v.draining:
                raise unavailable("the server is shutting down; retry on another instance")
            config = request.config
            name = check_config(config, self.w2v.models)
            if not request.audio:
                raise invalid_argument("audio is empty")
            audio = RivaAudio(config.encoding, config.sample_rate_hertz, config.audio_channel_count)
            data = audio.feed(request.audio) + audio.finish()
            layout = audio.layout
            w2v_request = pb.RecognizeRequest(
                config=w2v_config(config, name, layout.out_encoding, layout.sample_rate, layout.channels),
                audio_content=data)
            if not data:
                raise invalid_argument("the request holds no audio samples")
            error = None
        except (ServiceError, ChunkError) as e:
            error = e if isinstance(e, ServiceError) else invalid_argument(str(e))
        except Exception as e:   # a bug: the client gets INTERNAL, the log gets the traceback
            log.exception("Riva Recognize failed")
            error = ServiceError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        if error is not None:
            await self._fail(context, error)
        response = await self.w2v.Recognize(w2v_request, context)
        language = self.w2v.models.entry(name).language_code
        alternatives = [_alternative(a.transcript, a.words, final=True, word_times=config.enable_word_time_offsets,
                                     language=language) for a in response.alternatives]
        result = rasr.SpeechRecognitionResult(alternatives=alternatives, channel_tag=1,
                                              audio_processed=response.duration_s)
        return rasr.RecognizeResponse(results=[result])

    # -------------------------------------------------------------- StreamingRecognize
    async def StreamingRecognize(self, request_iterator, context):
        state: dict = {}
        requests = self._w2v_requests(request_iterator, state)
        ctx = _LazyContext(context, state)
        await self.w2v.StreamingRecognize(requests, ctx)

    async def _w2v_requests(self, riva_requests, state: dict) -> AsyncIterator[pb.StreamingRecognizeRequest]:
        """Riva's requests as w2v.v1's: the config once the audio's format is known (a WAV header
        says it in the first audio message), then the audio. Errors are ServiceErrors, which the
        w2v handler ends the call with."""
        limit = self.w2v.limits.max_chunk_bytes
        audio: Optional[RivaAudio] = None
        config = name = None
        sent_config = False
        try:
            async for request in riva_requests:
                if config is None:
                    if not request.HasField("streaming_config"):
                        raise invalid_argument("the first request must carry streaming_config "
                                               "(audio came before the config)")
                    config = request.streaming_config.config
                    name = check_config(config, self.w2v.models)
                    state["word_times"] = config.enable_word_time_offsets
                    state["language"] = self.w2v.models.entry(name).language_code
                    state["interim"] = request.streaming_config.interim_results
                    audio = RivaAudio(config.encoding, config.sample_rate_hertz, config.audio_channel_count)
                    continue
                if request.HasField("streaming_config"):
                    raise invalid_argument("streaming_config may only be sent once, first")
                if len(request.audio_content) > limit:
                    raise invalid_argument(f"audio chunk of {len(request.audio_content)} bytes is over the limit "
                                           f"of {limit} bytes")
                data = audio.feed(request.audio_content)
                if audio.layout is not None and not sent_config:
                    yield self._config_request(config, name, audio, state)
                    sent_config = True
                for piece in _split(data, limit, audio.layout):
                    yield pb.StreamingRecognizeRequest(audio_content=piece)
            if config is None:
                return                  # the w2v handler: "the stream ended before its config"
            data = audio.finish()
            if not sent_config:
                yield self._config_request(config, name, audio, state)
            for piece in _split(data, limit, audio.layout):
                yield pb.StreamingRecognizeRequest(audio_content=piece)
        except ChunkError as e:
            raise invalid_argument(str(e)) from None
        except (ServiceError, GeneratorExit, asyncio.CancelledError):
            raise
        except Exception as e:   # a bug: the client gets INTERNAL, the log gets the traceback
            if isinstance(e, grpc.RpcError) or type(e).__module__.startswith("grpc"):
                raise            # the call itself broke: the w2v handler tells the two apart
            log.exception("translating a Riva stream failed")
            raise ServiceError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}") from None

    @staticmethod
    def _config_request(config, name, audio: RivaAudio, state: dict) -> pb.StreamingRecognizeRequest:
        layout = audio.layout
        encoding, rate, channels = (layout.out_encoding, layout.sample_rate, layout.channels) if layout \
            else ("LINEAR16", 16000, 1)
        return pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
            config=w2v_config(config, name, encoding, rate, channels), interim_results=state["interim"]))


class _LazyContext(_StreamContext):
    """A _StreamContext whose word-time and language settings come from the stream's config,
    which arrives after the call starts."""

    def __init__(self, context, state: dict) -> None:
        super().__init__(context, False, "")
        self._state = state

    async def write(self, response) -> None:
        self._word_times = self._state.get("word_times", False)
        self._language = self._state.get("language", "")
        await super().write(response)


def _split(data: bytes, limit: int, layout) -> list[bytes]:
    """Output bytes in pieces of at most ``limit`` bytes, each whole frames."""
    if not data:
        return []
    frame = layout.out_frame_bytes
    step = max(frame, limit - limit % frame)
    return [data[i:i + step] for i in range(0, len(data), step)]
