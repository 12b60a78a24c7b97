"""Bearer-token authentication for the gRPC service (``authorization: Bearer TOKEN`` metadata).

Health checks, reflection and Riva's model list stay open: load balancers and tools probe them
without secrets, and they reveal nothing beyond the published .proto files and the model names.
"""

from __future__ import annotations

import hmac
from typing import Callable, Optional

import grpc

# Riva's model list is open too: NVIDIA's scripts ask for it (--list-models) without their metadata,
# and it names only the served models and their languages.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.",
                 "/nvidia.riva.asr.RivaSpeechRecognition/GetRivaSpeechRecognitionConfig")


def bearer_metadata(token: Optional[str]) -> tuple:
    return (("authorization", f"Bearer {token}"),) if token else ()


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, on_reject: Optional[Callable[[], None]] = None) -> None:
        if not token:
            raise ValueError("empty auth token")
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        # Constant-time comparison: the time taken says nothing about how much of a guess was right.
        if hmac.compare_digest(given, self._expected):
            return handler
        if self._on_reject is not None:
            self._on_reject()
        reason = "missing bearer token" if not given else "wrong bearer token"
        return _refusing(handler, reason)


def _refusing(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with UNAUTHENTICATED."""
    async def refuse(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
