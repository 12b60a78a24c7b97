"""OpenAI's transcription API: ``POST /v1/audio/transcriptions`` and ``GET /v1/models``.

The form fields (https://platform.openai.com/docs/api-reference/audio/createTranscription):
``file`` (any format ``w2v transcribe`` reads), ``model`` (a served model's name; the default
model when absent), ``language`` (checked against the model's language), ``prompt`` (its words are
hotwords for the beam search), ``response_format`` (json, text, srt, vtt, verbose_json),
``timestamp_granularities[]`` (segment, word: ``verbose_json`` then carries ``words``),
``temperature`` (accepted, ignored: CTC decoding draws no samples), ``stream`` (true: server-sent
events, one ``transcript.text.delta`` per segment of the file's transcript, then
``transcript.text.done`` with the whole text, the same as without ``stream``; live partial
results are the WebSocket's). Other fields are ignored.

The upload is spooled to one temporary file (the body is counted as it arrives, never held whole
in memory) and decoded by the project's audio loader; every transcription holds one of the
server's stream slots while it runs.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import tempfile
import time
import zlib
from contextlib import AsyncExitStack
from pathlib import Path
from typing import AsyncIterator, Optional, Sequence

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from w2v_serve.audio import AudioError, load_audio, probe
from w2v_serve.decoding import Word
from w2v_serve.service.backends import StreamOptions
from w2v_serve.service.errors import ServiceError
from w2v_serve.service.web.common import ApiError, bad_request, check_token, stream_slot, too_large, unknown_model
from w2v_serve.subtitles import Cue, render_srt, render_vtt, subtitle_cues
from w2v_serve.transcribe import TranscriptionResult

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
MAX_HOTWORDS = 256
_SPOOL_BLOCK = 1 << 20


class _BodyTooLarge(Exception):
    pass


def _limited(receive, limit: int):
    """The ASGI ``receive`` with a byte count: past ``limit`` bytes of body it raises."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge()
        return message
    return wrapped


class OpenAIApi:
    def __init__(self, server, max_upload_bytes: int) -> None:
        self.server = server                 # the RecognitionServer: models, service, token, metrics
        self.max_upload_bytes = max_upload_bytes

    @property
    def service(self):
        return self.server.service

    # ------------------------------------------------------------------ GET /v1/models
    async def models(self, request: Request) -> Response:
        try:
            check_token(self.server.auth_token, request.headers.get("authorization"))
        except ApiError as e:
            return self._fail(e)
        created = int(time.time())
        data = [{"id": m.name, "object": "model", "created": created, "owned_by": "w2v",
                 "language": m.language_code, "sample_rate": m.sample_rate, "default": m.default}
                for m in self.server.models.describe()]
        return JSONResponse({"object": "list", "data": data})

    # ------------------------------------------------------------------ POST /v1/audio/transcriptions
    async def transcriptions(self, request: Request) -> Response:
        started = time.monotonic()
        cleanup = AsyncExitStack()
        try:
            check_token(self.server.auth_token, request.headers.get("authorization"))
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_upload_bytes:
                raise self._too_large()
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                raise bad_request("Send the audio as multipart/form-data with a 'file' field", param="file")
            await cleanup.enter_async_context(stream_slot(self.service))
            form = await self._form(request)
            cleanup.push_async_callback(form.close)
            params = _Params.parse(form, self.server.models)
            spooled = await asyncio.to_thread(self._spool, params.file)
            cleanup.callback(os.unlink, spooled)
            backend = await cleanup.enter_async_context(self.server.models.lease(params.model))
            audio, duration = await asyncio.to_thread(self._decode, spooled, params.file.filename, backend.sample_rate)
            self.service.metrics.audio_seconds.labels(rpc="http").inc(duration)
            options = StreamOptions(interim_results=False, hotwords=params.hotwords)
            if params.stream:
                events = self._events(backend, audio, options, cleanup)
                cleanup = None               # the event stream closes it when it ends
                return StreamingResponse(events, media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            result = await backend.recognize(audio, options)
            self.service.metrics.recognize_latency.observe(time.monotonic() - started)
            return _render(result, params, duration, self.server.models.entry(params.model).language_code)
        except ServiceError as e:
            return self._fail(ApiError.from_service(e))
        except ApiError as e:
            return self._fail(e)
        finally:
            if cleanup is not None:
                await cleanup.aclose()

    def _fail(self, e: ApiError) -> Response:
        self.service.metrics.error(e.grpc_code)
        return e.response()

    def _too_large(self) -> ApiError:
        return too_large(f"Request body is over the limit of {self.max_upload_bytes} bytes (--max-upload-mb)")

    async def _form(self, request: Request):
        limited = Request(request.scope, _limited(request.receive, self.max_upload_bytes))
        try:
            return await limited.form(max_files=1, max_fields=64)
        except _BodyTooLarge:
            raise self._too_large() from None
        except Exception as e:    # starlette's MultiPartException / HTTPException: a malformed form
            raise bad_request(f"Malformed multipart form: {getattr(e, 'detail', None) or e}") from None

    @staticmethod
    def _spool(upload: UploadFile) -> str:
        """The upload as a named temporary file (copied in blocks: never whole in memory)."""
        suffix = Path(upload.filename or "").suffix
        suffix = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""
        fd, path = tempfile.mkstemp(prefix="w2v-upload-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as out:
                upload.file.seek(0)
                shutil.copyfileobj(upload.file, out, _SPOOL_BLOCK)
        except BaseException:
            os.unlink(path)
            raise
        return path

    def _decode(self, path: str, filename: Optional[str], sample_rate: int) -> tuple[np.ndarray, float]:
        name = filename or "file"
        try:
            info = probe(path)
            limit = self.service.limits.max_stream_seconds
            if info.duration_s > limit:
                raise too_large(f"{name}: {info.duration_s:.1f} s of audio is over the limit of {limit:g} s "
                                "(--max-stream-seconds)", code="audio_too_long")
            audio = load_audio(path, sample_rate)
        except AudioError as e:
            raise bad_request(f"Could not read the audio: {str(e).replace(path, name)}", param="file",
                              code="invalid_audio") from None
        return audio, len(audio) / sample_rate

    async def _events(self, backend, audio: np.ndarray, options: StreamOptions,
                      cleanup: AsyncExitStack) -> AsyncIterator[str]:
        """stream=true: the file's transcript (the same as without ``stream``) as one
        ``transcript.text.delta`` per segment, then ``transcript.text.done``."""
        try:
            result = await backend.recognize(audio, options)
            texts = [c.text for c in subtitle_cues(result.words)] if result.words else [result.text]
            for i, text in enumerate(t for t in texts if t):
                yield _sse({"type": "transcript.text.delta", "delta": (" " if i else "") + text})
            yield _sse({"type": "transcript.text.done", "text": result.text})
        except ServiceError as e:
            error = ApiError.from_service(e)
            self.service.metrics.error(error.grpc_code)
            yield _sse({"type": "error", **error.body()})
        finally:
            await cleanup.aclose()


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


# ---------------------------------------------------------------------------- the form
class _Params:
    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)

    @staticmethod
    def parse(form, models) -> "_Params":
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_request("Missing the 'file' field: the audio to transcribe", param="file")
        name = _text(form, "model") or models.default_name
        if name not in models.names():
            raise unknown_model(name, models.served())
        language = _text(form, "language")
        if language:
            try:
                models.resolve(name, language)
            except ServiceError as e:
                raise ApiError.from_service(e, param="language") from None
        response_format = _text(form, "response_format") or "json"
        if response_format not in FORMATS:
            raise bad_request(f"response_format must be one of {', '.join(FORMATS)}, not {response_format!r}",
                              param="response_format")
        granularities = [g for key in ("timestamp_granularities[]", "timestamp_granularities")
                         for g in form.getlist(key)]
        for g in granularities:
            if g not in GRANULARITIES:
                raise bad_request(f"timestamp_granularities[] takes segment or word, not {g!r}",
                                  param="timestamp_granularities")
        temperature = _text(form, "temperature")
        if temperature:
            try:
                float(temperature)
            except ValueError:
                raise bad_request("temperature must be a number", param="temperature") from None
        stream = (_text(form, "stream") or "false").lower()
        if stream not in ("true", "false", "1", "0"):
            raise bad_request("stream must be true or false", param="stream")
        hotwords = _hotwords(_text(form, "prompt") or "")
        return _Params(file=upload, model=name, language=language, response_format=response_format,
                       words="word" in granularities, stream=stream in ("true", "1"), hotwords=hotwords)


def _text(form, key: str) -> Optional[str]:
    value = form.get(key)
    if value is None or isinstance(value, UploadFile):
        return None
    return value.strip() or None


def _hotwords(prompt: str) -> tuple[str, ...]:
    """The prompt's words (split at spaces and commas, outer punctuation dropped), each once."""
    words = []
    for w in re.split(r"[\s,;]+", prompt):
        w = w.strip(".!?\"'()[]{}:")
        if w and w.lower() not in (x.lower() for x in words):
            words.append(w)
    if len(words) > MAX_HOTWORDS:
        raise bad_request(f"prompt: at most {MAX_HOTWORDS} words (they are used as hotwords)", param="prompt")
    return tuple(words)


# ---------------------------------------------------------------------------- responses
def _render(result: TranscriptionResult, params: _Params, duration: float, language_code: str) -> Response:
    fmt = params.response_format
    usage = {"type": "duration", "seconds": round(duration, 3)}
    if fmt == "json":
        return JSONResponse({"text": result.text, "usage": usage})
    if fmt == "text":
        return PlainTextResponse(result.text)
    cues = subtitle_cues(result.words)
    if fmt == "srt":
        return PlainTextResponse(render_srt(cues), media_type="application/x-subrip")
    if fmt == "vtt":
        return PlainTextResponse(render_vtt(cues), media_type="text/vtt")
    body = {"task": "transcribe", "language": language_code.split("-")[0].lower() or "en",
            "duration": round(duration, 3), "text": result.text, "segments": _segments(cues), "usage": usage}
    if params.words:
        body["words"] = [{"word": w.word, "start": round(w.start_s, 3), "end": round(w.end_s, 3)}
                         for w in result.words]
    return JSONResponse(body)


def _segments(cues: Sequence[Cue]) -> list[dict]:
    """OpenAI's segments from the subtitle cues. ``avg_logprob`` is the mean log of the words'
    confidences; ``tokens`` is empty (CTC tokens are characters, not the API's text tokens);
    ``no_speech_prob`` is 0 (a cue holds words)."""
    out = []
    for i, c in enumerate(cues):
        data = c.text.encode()
        out.append({"id": i, "seek": int(c.start_s * 100), "start": round(c.start_s, 3), "end": round(c.end_s, 3),
                    "text": c.text, "tokens": [], "temperature": 0.0,
                    "avg_logprob": round(_avg_logprob(c.words), 4),
                    "compression_ratio": round(len(data) / len(zlib.compress(data)), 4) if data else 0.0,
                    "no_speech_prob": 0.0})
    return out


def _avg_logprob(words: Sequence[Word]) -> float:
    if not words:
        return 0.0
    return sum(math.log(min(max(w.confidence, 1e-6), 1.0)) for w in words) / len(words)
