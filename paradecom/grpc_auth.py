"""Security (paradecom/security.py) applied to gRPC: the leader's token check, its TLS
credentials, and a client's channel that sends the token and checks the leader's certificate."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from paradecom.grpc_options import CHANNEL_OPTIONS
from paradecom.security import Security

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def server_credentials(sec: Security) -> grpc.ServerCredentials | None:
    if sec.tls_cert is None or sec.tls_key is None:
        return None
    return grpc.ssl_server_credentials(
        [(sec.tls_key, sec.tls_cert)], root_certificates=sec.tls_ca, require_client_auth=sec.tls_ca is not None
    )


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without the right bearer token, except the health service's own methods:
    UNAUTHENTICATED for any method name, one that exists or not (including reflection)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
            yield  # pragma: no cover - makes this an async generator, as streaming handlers are

        self._unary: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(refuse)
        self._stream: grpc.RpcMethodHandler[Any, Any] = grpc.unary_stream_rpc_method_handler(refuse_stream)
        self._bidi: grpc.RpcMethodHandler[Any, Any] = grpc.stream_stream_rpc_method_handler(refuse_stream)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        given = next((v for k, v in details.invocation_metadata or () if k == "authorization"), "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if hmac.compare_digest(given_bytes, self._expected):
            return await continuation(details)
        handler = await continuation(details)
        if handler is not None and details.method.startswith(HEALTH_PREFIX):
            return handler
        # A method that does not exist is refused like one that does (a bidi handler answers any
        # kind of call without reading it): UNIMPLEMENTED would tell an outsider which methods exist.
        if handler is None or (handler.request_streaming and handler.response_streaming):
            return self._bidi
        return self._stream if handler.response_streaming else self._unary


def _with_token(details: grpc.aio.ClientCallDetails, header: tuple[str, str]) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), header)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files each interceptor under the first call kind it matches, so each kind needs its own.
class _UnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _StreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._header), request)


def channel(address: str, sec: Security | None = None) -> grpc.aio.Channel:
    """An asyncio channel to the leader with ParaDecom's options, TLS and token as configured."""
    sec = sec or Security()
    interceptors: list[grpc.aio.ClientInterceptor] | None = (
        [_UnaryToken(sec.token), _StreamToken(sec.token)] if sec.token else None
    )
    if sec.tls:
        creds = grpc.ssl_channel_credentials(
            root_certificates=sec.tls_ca, private_key=sec.tls_key, certificate_chain=sec.tls_cert
        )
        return grpc.aio.secure_channel(address, creds, options=CHANNEL_OPTIONS, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)
