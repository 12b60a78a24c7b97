"""The Starlette application and the uvicorn server that runs it on the gRPC server's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Optional

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from w2v_serve.service.web.common import ApiError
from w2v_serve.service.web.openai_api import OpenAIApi
from w2v_serve.service.web.vosk import VoskSocket

log = logging.getLogger("w2v.serve")
STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_MB = 100


def build_app(server, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20) -> Starlette:
    """The HTTP face over a ``RecognitionServer`` (its models, service limits, token, metrics)."""
    api = OpenAIApi(server, max_upload_bytes)

    async def page(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(_request: Request) -> Response:
        ok = not server.service.draining and server.models.healthy()
        return Response("ok\n" if ok else "unavailable\n", status_code=200 if ok else 503, media_type="text/plain")

    async def http_error(_request: Request, exc: HTTPException) -> Response:
        """Starlette's own errors (unknown path, wrong method) in OpenAI's shape."""
        return ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None).response()

    routes = [
        Route("/", page),
        Route("/v1/models", api.models),
        Route("/v1/audio/transcriptions", api.transcriptions, methods=["POST"]),
        WebSocketRoute("/ws", VoskSocket(server).handle),
        Route("/metrics", metrics),
        Route("/healthz", health),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: ``w2v serve`` owns SIGTERM/SIGINT (draining both faces)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HttpServer:
    """The HTTP face on ``host:port`` (0: a free port), on the running event loop."""

    def __init__(self, server, host: str = "127.0.0.1", port: int = 0,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20) -> None:
        self.server, self.host, self.requested_port = server, host, port
        self.app = build_app(server, max_upload_bytes)
        self.port: Optional[int] = None
        self._uvicorn: Optional[_Uvicorn] = None
        self._task: Optional[asyncio.Task] = None

    async def start(self) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.requested_port), family=family, backlog=128)
        self.port = sock.getsockname()[1]
        limits = self.server.limits
        config = uvicorn.Config(self.app, lifespan="off", access_log=False, log_level="warning",
                                ws_max_size=limits.max_chunk_bytes + 4096, ws_per_message_deflate=False,
                                timeout_graceful_shutdown=5)
        self._uvicorn = _Uvicorn(config)
        self._task = asyncio.ensure_future(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._task.done():
                self._task.result()          # its start-up error
                raise OSError(f"the HTTP server on {self.host}:{self.port} stopped at start-up")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        if self._uvicorn is not None and self._task is not None:
            self._uvicorn.should_exit = True
            await self._task
