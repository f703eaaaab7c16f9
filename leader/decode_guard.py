"""Requests whose bytes are not a valid protobuf answered INVALID_ARGUMENT, not UNKNOWN.

grpc decodes a request with the handler's `request_deserializer` before any servicer code runs; a
`DecodeError` there ends the call with UNKNOWN "Unexpected DecodeError", which tells the caller
nothing it can act on. This interceptor wraps each handler's deserializer so a `DecodeError` yields
a marker instead, and wraps the handler's behaviour so a marker is refused with INVALID_ARGUMENT and
a one-line message before the servicer sees it. Every kind of RPC is covered: the requests of
streaming calls are checked one by one as they are read.

Put it after the TokenInterceptor: a caller without the token is refused UNAUTHENTICATED whatever
its bytes, since the token interceptor's refusal handlers do not decode the request at all.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from paradecom.logs import get_logger

log = get_logger("paradecom.leader")


class _Undecodable:
    """Stands in for a request whose bytes could not be decoded; `message` says why."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _guard_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            # upb's message names the type ("Error parsing message with type '...': ..."), one line.
            return _Undecodable(" ".join(str(exc).split()) or "the request is not a valid protobuf message")

    return decode


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], method: str, request: _Undecodable) -> None:
    log.warning("undecodable request refused", method=method, error=request.message)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request not decodable: {request.message}")


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any], method: str
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            await _refuse(context, method, request)
        yield request


async def _settle(result: Any) -> Any:
    # Every servicer of the leader (ours, health, reflection) is a coroutine; a plain function
    # would be called on the event loop here rather than in grpc's thread pool.
    return await result if inspect.isawaitable(result) else result


def _wrap_unary_unary(behaviour: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await _refuse(context, method, request)
        return await _settle(behaviour(request, context))

    return guarded


def _wrap_stream_unary(behaviour: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
    async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await _settle(behaviour(_checked(requests, context, method), context))

    return guarded


def _wrap_streaming_response(behaviour: Callable[..., Any], method: str, *, request_streaming: bool) -> Any:
    """A response-streaming behaviour of the same kind as `behaviour`: grpc.aio drives an async
    generator by iterating it and a coroutine by awaiting it (its responses go by context.write)."""

    def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return _checked(request, context, method) if request_streaming else request

    if inspect.isasyncgenfunction(behaviour):

        async def guarded_generator(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await _refuse(context, method, request)
            # Closed with the wrapper rather than left to the garbage collector on its own, so the
            # servicer's `finally` (PullTask's disconnect) runs when the call ends.
            async with contextlib.aclosing(behaviour(checked(request, context), context)) as responses:
                async for response in responses:
                    yield response

        return guarded_generator

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await _refuse(context, method, request)
        return await _settle(behaviour(checked(request, context), context))

    return guarded


def guard(handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with its request decoding guarded (see the module's docstring)."""
    deserialize = handler.request_deserializer
    if deserialize is None:
        return handler  # takes raw bytes: nothing is decoded, nothing can fail to be
    decode = _guard_deserializer(deserialize)
    serialize = handler.response_serializer
    if handler.request_streaming and handler.response_streaming and handler.stream_stream is not None:
        behaviour = _wrap_streaming_response(handler.stream_stream, method, request_streaming=True)
        return grpc.stream_stream_rpc_method_handler(behaviour, decode, serialize)
    if handler.request_streaming and handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_wrap_stream_unary(handler.stream_unary, method), decode, serialize)
    if handler.response_streaming and handler.unary_stream is not None:
        behaviour = _wrap_streaming_response(handler.unary_stream, method, request_streaming=False)
        return grpc.unary_stream_rpc_method_handler(behaviour, decode, serialize)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_wrap_unary_unary(handler.unary_unary, method), decode, serialize)
    return handler


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    """Answers a request that is not a valid protobuf of its type with INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        return None if handler is None else guard(handler, details.method)
