"""Streaming recognition over a WebSocket (``/ws``) in Vosk's server protocol
(https://github.com/alphacep/vosk-server, ``websocket/asr_server.py``), so Vosk's clients work
unchanged; docs/http.md says why this protocol and what it adds.

Client -> server:
* text ``{"config": {"sample_rate": 16000, "model": "NAME", "hotwords": ["..."], "partials": true}}``
  (optional, before the audio; every key optional);
* binary messages: 16-bit little-endian mono PCM at ``sample_rate`` (any rate: resampled);
* text ``{"eof": 1}``: the end of the audio.

Server -> client, exactly one text message per audio message (Vosk's clients wait for it) and one
after ``eof``: ``{"partial": "text so far"}``, or, when a segment ended (a pause),
``{"result": [{"word", "start", "end", "conf"}, ...], "text": "..."}`` with times in seconds from
the start of the stream. After the last result the server closes with 1000. An error is
``{"error": {message, type, param, code}}`` (OpenAI's shape, as on the HTTP API) followed by a
close: 1008 (auth, unknown model), 1007 (bad message or audio, a message over
``--max-chunk-bytes``), 1009 (over ``--max-stream-seconds``), 1013 (no free stream, draining, the
compute budget spent), 1011 (idle timeout, audio too slow, server error). The stream's audio goes
through the service's ``limits.AudioFeed`` and ``StreamGuard``: the same budgets and idle clock as
gRPC streams.

The model: ``config.model``, else the ``model`` query parameter, else the default model. Auth:
``Authorization: Bearer TOKEN``, or the ``token`` query parameter (a browser cannot set headers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import AsyncExitStack
from typing import Optional, Sequence

from starlette.websockets import WebSocket, WebSocketDisconnect

from w2v_serve.service.backends import StreamOptions
from w2v_serve.service.errors import ServiceError, invalid_argument
from w2v_serve.service.limits import AudioFeed, StreamGuard
from w2v_serve.service.pcm import AudioFormat, ChunkError
from w2v_serve.service.web.common import ApiError, check_token, stream_slot, unknown_model
from w2v_serve.streaming import StreamResult

log = logging.getLogger("w2v.serve")
_CLOSE = {400: 1007, 401: 1008, 404: 1008, 413: 1009, 429: 1013, 503: 1013}
MAX_HOTWORDS = 256


class _Ended(Exception):
    """The client went away."""


class VoskSocket:
    def __init__(self, server) -> None:
        self.server = server

    @property
    def service(self):
        return self.server.service

    async def handle(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            check_token(self.server.auth_token, ws.headers.get("authorization"), ws.query_params.get("token"))
            async with stream_slot(self.service):
                await self._stream(ws)
        except (ServiceError, ChunkError, ApiError) as e:
            if isinstance(e, ChunkError):
                e = invalid_argument(str(e))
            error = ApiError.from_service(e) if isinstance(e, ServiceError) else e
            self.service.metrics.error(error.grpc_code)
            await _close(ws, _CLOSE.get(error.status, 1011), error.body())
        except (_Ended, WebSocketDisconnect):
            pass
        except Exception as e:  # a bug: the client gets 1011, the log the traceback
            log.exception("WebSocket stream failed")
            error = ApiError(500, f"{type(e).__name__}: {e}", type="server_error", code="internal_error")
            await _close(ws, 1011, error.body())

    async def _receive(self, ws: WebSocket, guard: StreamGuard) -> dict:
        """The next message; the idle clock (the client's silence only) runs while waiting."""
        guard.begin_wait()
        try:
            while True:
                guard.check_waiting()
                try:
                    message = await asyncio.wait_for(ws.receive(), max(0.01, guard.idle_left()))
                    break
                except asyncio.TimeoutError:
                    continue
        finally:
            guard.end_wait()
        if message["type"] == "websocket.disconnect":
            raise _Ended()
        return message

    async def _stream(self, ws: WebSocket) -> None:
        models, metrics = self.server.models, self.service.metrics
        guard = StreamGuard(self.service.limits)     # budgets and the idle clock, as on gRPC
        config: dict = {}
        stream = feed = None
        last_partial = ""
        lease = AsyncExitStack()
        try:
            while True:
                message = await self._receive(ws, guard)
                data: Optional[bytes] = message.get("bytes")
                if data is None:
                    request = _json(message.get("text") or "")
                    if "config" in request:
                        if stream is not None:
                            raise invalid_argument("config may only be sent before the audio")
                        config = _config(request["config"])
                        continue
                    if not request.get("eof"):
                        raise invalid_argument('a text message is {"config": {...}} or {"eof": 1}')
                arrived = time.monotonic()
                if stream is None:                    # the first audio (or an eof before any)
                    name = config.get("model") or ws.query_params.get("model") or models.default_name
                    if name not in models.names():
                        raise unknown_model(name, models.served())
                    backend = await lease.enter_async_context(models.lease(name))
                    stream = await backend.open_stream(StreamOptions(
                        interim_results=config.get("partials", True), hotwords=config.get("hotwords", ())))
                    feed = AudioFeed(stream, AudioFormat("LINEAR16", config.get("sample_rate", 16000)),
                                     backend.sample_rate, guard)
                if data is None:                      # eof: the last results, then close
                    results = await feed.finish()
                    stream = None                     # the backend closed it with the final result
                    await ws.send_text(json.dumps(_final(results, force=True)))
                    await ws.close(1000)
                    return
                results = await feed.feed(data)
                metrics.audio_seconds.labels(rpc="websocket").inc(feed.format.seconds(len(data)))
                reply = _final(results)
                if reply is None:
                    partials = [r for r in results if not r.is_final]
                    last_partial = partials[-1].text if partials else last_partial
                    reply = {"partial": last_partial}
                else:
                    last_partial = ""
                await ws.send_text(json.dumps(reply))
                for kind in {"final" if r.is_final else "partial" for r in results}:
                    metrics.latency.labels(kind=kind).observe(time.monotonic() - arrived)
        finally:
            if stream is not None:
                stream.close()
            await lease.aclose()


def _final(results: Sequence[StreamResult], force: bool = False) -> Optional[dict]:
    """The final results of one step as one Vosk result (words of every segment that ended)."""
    finals = [r for r in results if r.is_final]
    if not finals and not force:
        return None
    words = [w for r in finals for w in r.transcript.words]
    text = " ".join(r.text for r in finals if r.text)
    return {"result": [{"word": w.word, "start": round(w.start_s, 3), "end": round(w.end_s, 3),
                        "conf": round(w.confidence, 4)} for w in words], "text": text}


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        raise invalid_argument("a text message must be JSON: {\"config\": {...}} or {\"eof\": 1}") from None
    if not isinstance(value, dict):
        raise invalid_argument("a text message must be a JSON object")
    return value


def _config(config) -> dict:
    if not isinstance(config, dict):
        raise invalid_argument("config must be an object")
    out: dict = {}
    rate = config.get("sample_rate", 16000)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate != int(rate):
        raise invalid_argument("config.sample_rate must be a whole number of Hz")
    AudioFormat("LINEAR16", int(rate))        # the service's sample-rate range (ChunkError beyond)
    out["sample_rate"] = int(rate)
    if config.get("model") is not None:
        if not isinstance(config["model"], str):
            raise invalid_argument("config.model must be a model name")
        out["model"] = config["model"]
    hotwords = config.get("hotwords", [])
    if not isinstance(hotwords, list) or not all(isinstance(h, str) for h in hotwords):
        raise invalid_argument("config.hotwords must be a list of words or phrases")
    hotwords = tuple(h.strip() for h in hotwords if h.strip())
    if len(hotwords) > MAX_HOTWORDS:
        raise invalid_argument(f"at most {MAX_HOTWORDS} hotwords")
    out["hotwords"] = hotwords
    out["partials"] = bool(config.get("partials", True))
    return out


async def _close(ws: WebSocket, code: int, body: dict) -> None:
    try:
        await ws.send_text(json.dumps(body))
        await ws.close(code, body["error"]["message"][:120])
    except Exception:   # the client is gone already
        pass

