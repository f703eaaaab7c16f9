"""The gRPC options ParaDecom sets are ones gRPC core knows: core ignores a name it does not know
without a word, so a misspelt option silently does nothing."""

from __future__ import annotations

from paradecom.grpc_options import CHANNEL_OPTIONS, SERVER_OPTIONS

# The names among gRPC core's channel arguments (include/grpc/impl/channel_arg_names.h in
# github.com/grpc/grpc) that ParaDecom may set; an option outside them is a typo or a name from
# another stack.
GRPC_CORE_NAMES = frozenset(
    {
        "grpc.max_send_message_length",
        "grpc.max_receive_message_length",
        "grpc.keepalive_time_ms",
        "grpc.keepalive_timeout_ms",
        "grpc.keepalive_permit_without_calls",
        "grpc.http2.max_pings_without_data",
        "grpc.http2.min_ping_interval_without_data_ms",
        "grpc.http2.max_ping_strikes",
        "grpc.initial_reconnect_backoff_ms",
        "grpc.min_reconnect_backoff_ms",
        "grpc.max_reconnect_backoff_ms",
    }
)


def test_every_option_set_is_a_grpc_core_channel_argument() -> None:
    """Every option of the leader's server and of the clients' channels is named as gRPC core
    names it, and none is set twice."""
    for options in (SERVER_OPTIONS, CHANNEL_OPTIONS):
        names = [name for name, _ in options]
        assert set(names) <= GRPC_CORE_NAMES, set(names) - GRPC_CORE_NAMES
        assert len(names) == len(set(names))
