"""What the HTTP front-ends share: OpenAI-shaped errors, the bearer token check, and a stream
slot counted with the gRPC streams (so ``--max-streams`` and draining cover both)."""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

import grpc
from starlette.responses import JSONResponse

from w2v_serve.service.errors import ServiceError

# A gRPC status as (HTTP status, OpenAI error type, OpenAI error code).
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_request_error", "invalid_api_key"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    grpc.StatusCode.OUT_OF_RANGE: (413, "invalid_request_error", "audio_too_long"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
    grpc.StatusCode.INTERNAL: (500, "server_error", "internal_error"),
}


class ApiError(Exception):
    """An error answered as OpenAI answers them: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 grpc_code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.grpc_code = grpc_code       # the metrics' label: the same codes as the gRPC side

    @staticmethod
    def from_service(e: ServiceError, param: Optional[str] = None) -> "ApiError":
        status, type_, code = _HTTP.get(e.code, (500, "server_error", "internal_error"))
        return ApiError(status, e.message, type=type_, param=param, code=code, grpc_code=e.code)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: Optional[str] = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def too_large(message: str, code: str = "file_too_large") -> ApiError:
    return ApiError(413, message, code=code, grpc_code=grpc.StatusCode.OUT_OF_RANGE)


def unknown_model(name: str, served: str) -> ApiError:
    return ApiError(404, f"The model '{name}' does not exist or is not served here; served: {served}",
                    param="model", code="model_not_found", grpc_code=grpc.StatusCode.NOT_FOUND)


def check_token(expected: Optional[str], authorization: Optional[str], token: Optional[str] = None) -> None:
    """Pass when no token is configured, or when ``Authorization: Bearer TOKEN`` (or, for
    WebSockets from a browser, the ``token`` query parameter) carries it; else 401."""
    if not expected:
        return
    given = f"Bearer {token}" if token is not None and not authorization else (authorization or "")
    # Constant-time comparison, as on the gRPC side.
    if hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        return
    reason = ("Missing bearer token: send 'Authorization: Bearer KEY' (the OpenAI SDK's api_key)" if not given
              else "Incorrect API key provided")
    raise ApiError(401, reason, code="invalid_api_key", grpc_code=grpc.StatusCode.UNAUTHENTICATED)


@asynccontextmanager
async def stream_slot(service) -> AsyncIterator[None]:
    """One of the server's ``--max-streams`` (shared with gRPC streams) for the block; refused
    with 429 when none is free and 503 while the server drains."""
    try:
        service._admit()
    except ServiceError as e:
        raise ApiError.from_service(e) from None
    service.open_streams += 1
    service.metrics.streams_open.inc()
    service.metrics.streams.inc()
    try:
        yield
    finally:
        service.open_streams -= 1
        service.metrics.streams_open.dec()
        if service.open_streams == 0 and service._none_open is not None:
            service._none_open.set()
