"""`paradecom-leader`: run a leader."""

from __future__ import annotations

import asyncio

from paradecom import limits
from paradecom.cliargs import Parser, add_logging_flags, address, fail, float_range, int_range
from paradecom.errors import ConfigError
from paradecom.logs import configure_logging
from paradecom.security import add_security_flags, security_from_args

from .lifecycle import LeaseConfig
from .llm_budget import MAX_RPM, MAX_TPM
from .server import LeaderSettings, serve

PROG = "paradecom-leader"


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="ParaDecom leader: owns all state, hands tasks to runners under leases.")
    parser.add_argument(
        "--listen",
        type=address,
        default="127.0.0.1:50051",
        help="HOST:PORT to serve gRPC on (port 0 picks a free one; default 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--db",
        default="paradecom.db",
        help="SQLite file holding every project and task (default ./paradecom.db); restart on the same file to resume",
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
        help="default depth limit for projects that set none (default 3)",
    )
    parser.add_argument(
        "--llm-rpm",
        type=int_range(0, MAX_RPM),
        default=0,
        metavar="N",
        help="LLM requests per minute over all runners together (default 0: no limit)",
    )
    parser.add_argument(
        "--llm-tpm",
        type=int_range(0, MAX_TPM),
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
    args = build_parser().parse_args(argv)
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
            metrics_listen=args.metrics_listen or "", insecure=args.insecure,
        )  # fmt: skip
        asyncio.run(serve(settings))
    except ConfigError as exc:
        return fail(PROG, str(exc))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
