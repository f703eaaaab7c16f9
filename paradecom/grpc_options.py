"""gRPC settings both ends agree on: message size and keepalive for long-lived streams.

A runner's PullTask stream and a client's WatchProject stream can sit idle for minutes while an LLM
thinks; keepalive pings keep NATs and load balancers from dropping them silently and let each side
notice a dead peer within about 30 s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paradecom import limits

if TYPE_CHECKING:
    import grpc

KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000

_COMMON: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", limits.MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

SERVER_OPTIONS: list[tuple[str, int]] = [
    *_COMMON,
    # Accept the clients' pings at their pace instead of answering GOAWAY "too_many_pings" (gRPC
    # core's GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: the name has no "recv").
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
]

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *_COMMON,
    # Reconnect quickly after a leader restart; the runner's own loop adds its backoff on top.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


def insecure_channel(address: str) -> grpc.aio.Channel:
    """An asyncio channel to `address` (HOST:PORT) with ParaDecom's options, no TLS, no token."""
    # Imported here: the commands read their flags (parse_address) before grpc is needed.
    import grpc

    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def parse_address(value: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT); raise ValueError with a readable message."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port must be a number from 0 to 65535")
    return host.strip("[]"), int(port_text)
