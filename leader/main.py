"""`paradecom-leader`: run a leader."""

from __future__ import annotations

import argparse
import asyncio
import os
import re

from paradecom import limits
from paradecom.cliargs import (
    Parser,
    add_logging_flags,
    add_request_flags,
    address,
    fail,
    float_range,
    int_range,
    request_bounds,
)
from paradecom.errors import ConfigError
from paradecom.logs import configure_logging
from paradecom.runner.prompt import RequestSettings
from paradecom.runner.schema import ANSWER_PROFILES, ENV_ANSWER_PROFILE
from paradecom.security import add_security_flags, security_from_args

from .lifecycle import LeaseConfig
from .server import LeaderSettings, serve

PROG = "paradecom-leader"
# A URL's scheme and colon (postgresql:, sqlite:, file:): two letters at least, so that a Windows
# drive (C:) stays a path.
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def _answer_profile(text: str) -> str:
    if text not in ANSWER_PROFILES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(ANSWER_PROFILES)}")
    return text


def _sqlite_db(text: str) -> str:
    """A flag type: the SQLite store, a file path or `:memory:`. A URL is refused (SQLite would
    take it for a file name); the message names only its scheme, never its credentials."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give a SQLite file path or :memory:")
    url = _URL_SCHEME.match(text)
    if url:
        raise argparse.ArgumentTypeError(
            f"a URL ({url.group(1)}:...) is not a SQLite file path: give a file path or :memory: "
            "(the leader keeps its state in SQLite; ./NAME for a file whose name has a colon)"
        )
    return text


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="ParaDecom leader: owns all state, hands tasks to runners under leases.")
    parser.add_argument(
        "--listen",
        type=address,
        default=limits.DEFAULT_LEADER_ADDRESS,
        help=f"HOST:PORT to serve gRPC on (port 0 picks a free one; default {limits.DEFAULT_LEADER_ADDRESS})",
    )
    parser.add_argument(
        "--db",
        type=_sqlite_db,
        default="paradecom.db",
        metavar="PATH",
        help="SQLite file holding every project and task (default ./paradecom.db), or :memory: for a leader "
        "that keeps nothing after it stops; restart on the same file to resume. A URL (postgresql://...) is "
        "refused: the store is SQLite",
    )
    parser.add_argument(
        "--lease-timeout",
        type=float_range(limits.MIN_LEASE_TIMEOUT_S, limits.MAX_LEASE_TIMEOUT_S),
        default=limits.DEFAULT_LEASE_TIMEOUT_S,
        metavar="S",
        help=f"seconds a lease lives without a heartbeat (default {limits.DEFAULT_LEASE_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-attempts",
        type=int_range(1, limits.MAX_ATTEMPTS_LIMIT),
        default=limits.DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help=f"leases granted per task before it is dead-lettered (default {limits.DEFAULT_MAX_ATTEMPTS})",
    )
    parser.add_argument(
        "--max-depth",
        type=int_range(1, limits.MAX_DEPTH_LIMIT),
        default=limits.DEFAULT_MAX_DEPTH,
        metavar="N",
        help=f"default depth limit for projects that set none (default {limits.DEFAULT_MAX_DEPTH})",
    )
    parser.add_argument(
        "--llm-rpm",
        type=int_range(0, limits.MAX_RPM),
        default=0,
        metavar="N",
        help="LLM requests per minute over all runners together (default 0: no limit)",
    )
    parser.add_argument(
        "--llm-tpm",
        type=int_range(0, limits.MAX_TPM),
        default=0,
        metavar="N",
        help="LLM tokens per minute over all runners together (default 0: no limit)",
    )
    parser.add_argument(
        "--metrics-listen",
        type=address,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks a free one; the line "
        "`metrics HOST:PORT` on stderr says which); default: none",
    )
    # The LlmRequest every assignment carries (task.proto): every runner asks the same.
    add_request_flags(parser)
    parser.add_argument(
        "--answer-profile",
        type=_answer_profile,
        # A string default goes through `type`, so a bad environment value is a flag error.
        default=os.environ.get(ENV_ANSWER_PROFILE) or "full",
        metavar="PROFILE",
        help=f"what an answer is asked to hold: full, or small for very small models such as the embedded "
        f"one (default ${ENV_ANSWER_PROFILE}, else full)",
    )
    add_security_flags(parser, server=True)
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve on an address other machines can reach (--listen or --metrics-listen not loopback) "
        "with no token; without it such a leader refuses to start",
    )
    add_logging_flags(parser)
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    request = RequestSettings(*request_bounds(parser, args), args.answer_profile)
    configure_logging(args.log_format, args.log_level)
    lease = LeaseConfig(
        lease_timeout_s=args.lease_timeout,
        max_attempts=args.max_attempts,
        # A dead runner's leases come back within half a lease; a live one heartbeats every third.
        disconnect_grace_s=args.lease_timeout / 2,
    )
    try:
        security = security_from_args(args, server=True)
        settings = LeaderSettings(
            listen=args.listen, db=args.db, lease=lease, max_depth=args.max_depth,
            llm_rpm=args.llm_rpm, llm_tpm=args.llm_tpm, security=security,
            metrics_listen=args.metrics_listen or "", request=request, insecure=args.insecure,
        )  # fmt: skip
        asyncio.run(serve(settings))
    except ConfigError as exc:
        return fail(PROG, str(exc))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
