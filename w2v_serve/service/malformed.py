"""Requests whose bytes are not the message they claim to be end with INVALID_ARGUMENT.

gRPC parses a request with the method's deserializer before the handler runs; a parse error
there ends a unary call with UNKNOWN (and a server traceback) and breaks a stream's request
iterator (which a handler would report as UNAVAILABLE, a status clients retry). This server
interceptor, for every service on the server (w2v.v1, Riva, health, reflection), swaps in a
deserializer that never raises: bytes that do not parse become a ``Malformed`` value, and

* a unary request (or the first of a stream) that is ``Malformed`` ends the call with
  INVALID_ARGUMENT before the handler sees it;
* a ``Malformed`` message inside a request stream raises ``MalformedRequest`` (a
  ``ServiceError`` with INVALID_ARGUMENT) from the handler's request iterator; a handler that
  reads its requests on another task passes ServiceErrors through as they are, and if it ends
  without sending a status the interceptor sends INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import grpc

from w2v_serve.service.errors import ServiceError


class Malformed:
    """A request whose bytes did not parse."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class MalformedRequest(ServiceError):
    def __init__(self, reason: str) -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request message: {reason}")


def tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as e:       # DecodeError, or anything a parser raises on hostile bytes
            return Malformed(str(e) or type(e).__name__)
    return parse


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, on_reject: Callable[[], None] | None = None) -> None:
        self._on_reject = on_reject

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        if handler.request_streaming:
            name = "stream_stream" if handler.response_streaming else "stream_unary"
        else:
            name = "unary_stream" if handler.response_streaming else "unary_unary"
        behavior = getattr(handler, name)
        wrap = self._streaming if handler.request_streaming else self._unary
        return handler._replace(request_deserializer=tolerant(handler.request_deserializer),
                                **{name: wrap(behavior)})

    async def _refuse(self, context, reason: str) -> None:
        if self._on_reject is not None:
            self._on_reject()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request message: {reason}")

    def _unary(self, behavior):
        if inspect.isasyncgenfunction(behavior):
            async def agen(request, context):
                if isinstance(request, Malformed):
                    await self._refuse(context, request.reason)
                async for response in behavior(request, context):
                    yield response
            return agen

        async def unary(request, context):
            if isinstance(request, Malformed):
                await self._refuse(context, request.reason)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        return unary

    def _streaming(self, behavior):
        interceptor = self

        class Requests:
            """The request iterator, with Malformed messages turned into MalformedRequest."""

            def __init__(self, requests) -> None:
                self._requests = requests.__aiter__()
                self.bad: str | None = None

            def __aiter__(self):
                return self

            async def __anext__(self):
                request = await self._requests.__anext__()
                if isinstance(request, Malformed):
                    self.bad = request.reason
                    raise MalformedRequest(request.reason)
                return request

        async def finish(requests: Requests, context, error: BaseException | None) -> None:
            # The handler ended (or failed) after a malformed message without a status of its own.
            if requests.bad is not None and not _status_sent(context):
                await interceptor._refuse(context, requests.bad)
            if error is not None:
                raise error

        if inspect.isasyncgenfunction(behavior):
            async def agen(request_iterator, context):
                requests = Requests(request_iterator)
                try:
                    async for response in behavior(requests, context):
                        yield response
                except Exception as e:
                    await finish(requests, context, e)
                    return
                await finish(requests, context, None)
            return agen

        async def call(request_iterator, context):
            requests = Requests(request_iterator)
            try:
                result = behavior(requests, context)
                result = await result if inspect.isawaitable(result) else result
            except Exception as e:
                await finish(requests, context, e)
                return None
            await finish(requests, context, None)
            return result
        return call


def _status_sent(context) -> bool:
    """Whether the call already has its status (aborted, or done)."""
    try:
        if context.done():
            return True
    except Exception:
        pass
    code = getattr(context, "code", lambda: None)()
    return code not in (None, grpc.StatusCode.OK)
