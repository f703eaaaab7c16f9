"""`paradecom-runner`: the runner process. Exit 0 after a clean stop, 2 on bad flags or settings.

Only the standard library is imported at the top: `main` first installs the handler that makes a
SIGTERM harmless, then imports the rest (grpc, openai and pydantic take most of a second), so a
runner stopped while it is still starting exits 0 like any other.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from paradecom.metrics_server import MetricsServer

    from .loop import DecompositionRunner

PROG = "paradecom-runner"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class EarlyStop:
    """Counts SIGTERM/SIGINT received before the event loop's own handlers take over (while the
    runner imports, parses its flags and builds its parts), instead of dying of them."""

    def __init__(self) -> None:
        self.signals = 0

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._note)

    def _note(self, signum: int, frame: types.FrameType | None) -> None:
        # Only a count: a signal handler runs between any two bytecodes, so it touches nothing else.
        self.signals += 1


def _structured_output(text: str) -> str:
    from .llm import STRUCTURED_OUTPUT_MODES

    if text not in STRUCTURED_OUTPUT_MODES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(STRUCTURED_OUTPUT_MODES)}")
    return text


def _non_empty(limit: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError("must not be empty")
        if len(text) > limit:
            raise argparse.ArgumentTypeError(f"longer than {limit} characters")
        return text

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The runner's flags; every range is checked while parsing."""
    from paradecom import limits
    from paradecom.cliargs import Parser, add_logging_flags, add_request_flags, address, float_range, int_range
    from paradecom.security import add_security_flags

    from .decompose import DEFAULT_MODEL
    from .llm import ENV_STRUCTURED_OUTPUT

    parser = Parser(
        prog=PROG,
        description="Pull tasks from a ParaDecom leader, decompose them with an LLM, submit the results. "
        "The LLM endpoint is set with OPENAI_BASE_URL (and OPENAI_API_KEY for hosted endpoints).",
    )
    parser.add_argument("--leader", required=True, type=address, metavar="HOST:PORT", help="the leader's address")
    parser.add_argument(
        "--concurrency",
        type=int_range(1, limits.MAX_CONCURRENCY),
        default=limits.DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"tasks worked on at once, 1..{limits.MAX_CONCURRENCY} (default {limits.DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--model",
        type=_non_empty(200),
        default=os.environ.get("PARADECOM_MODEL") or DEFAULT_MODEL,
        metavar="NAME",
        help=f"model name sent to the endpoint (default $PARADECOM_MODEL, else {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--runner-id",
        type=_non_empty(limits.MAX_RUNNER_ID_CHARS),
        default=None,
        metavar="ID",
        help="stable id of this runner (default hostname-pid-random)",
    )
    parser.add_argument(
        "--structured-output",
        type=_structured_output,
        default=os.environ.get(ENV_STRUCTURED_OUTPUT) or "auto",
        metavar="MODE",
        help="how the answer's JSON schema is sent: json_schema (OpenAI, vLLM, Ollama), json_object "
        "(llama-cpp-python's server), prompt (no response_format), or auto: the first of those the "
        f"endpoint accepts, learned on the first call (default ${ENV_STRUCTURED_OUTPUT}, else auto)",
    )
    add_request_flags(
        parser, scope=", for an assignment that carries no LLM request (paradecom-leader always sends one)"
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="always ask the LLM; by default a decomposition already made is taken from the cache "
        "($PARADECOM_CACHE_DIR, else ~/.cache/paradecom)",
    )
    add_security_flags(parser, server=False)
    parser.add_argument(
        "--drain-timeout",
        type=float_range(0.0, limits.MAX_LEASE_TIMEOUT_S),
        default=limits.DEFAULT_DRAIN_TIMEOUT_S,
        metavar="S",
        help="on SIGTERM, seconds to let tasks in hand finish before releasing them "
        f"(default {limits.DEFAULT_DRAIN_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--metrics-listen",
        type=address,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks a free one; the line "
        "`metrics HOST:PORT` on stderr says which); with a token, a scrape must send it; default: none",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve --metrics-listen on an address other machines can reach with no token; without it "
        "such a runner refuses to start",
    )
    add_logging_flags(parser)
    return parser


async def _serve(
    runner: DecompositionRunner, early: EarlyStop, metrics_listen: str | None = None, token: str | None = None
) -> None:
    import asyncio

    from paradecom.errors import ConfigError

    metrics: MetricsServer | None = None
    if metrics_listen and runner.metrics:
        # Imported only when asked for: aiohttp adds a quarter of a second to every start.
        from paradecom.metrics_server import MetricsServer

        metrics = MetricsServer(metrics_listen, runner.metrics.registry, token=token)
        try:
            await metrics.start()
        except ConfigError:
            await runner.decomposer.close()
            raise
    loop = asyncio.get_running_loop()
    # The first signal drains; a second one releases what is left at once.
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, runner.request_stop)
    # Signals that came while starting count as if they came now (the handlers above are in place,
    # so none falls between the two).
    for _ in range(early.signals):
        runner.request_stop()
    try:
        await runner.run()
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        # Until main() returns a signal stays harmless: the runner is already stopping.
        early.install()
        # Made here, not by the runner, so closed here.
        await runner.decomposer.close()
        if metrics is not None:
            await metrics.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the runner until SIGTERM or SIGINT; the process's exit code."""
    # First of all, before the imports in _main: from here on a stop signal is recorded, not fatal.
    # (Signal handlers belong to the main thread; called from another, main leaves them alone.)
    early = EarlyStop()
    owns_signals = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if owns_signals else {}
    if owns_signals:
        early.install()
    try:
        return _main(argv, early)
    finally:
        # As they were: main() may run inside a program (a test) that has its own.
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)


def _main(argv: list[str] | None, early: EarlyStop) -> int:
    import asyncio

    from paradecom.cliargs import request_bounds
    from paradecom.errors import ConfigError
    from paradecom.logs import configure_logging
    from paradecom.security import exposure_error, security_from_args

    from .cache import DecompositionCache
    from .decompose import Decomposer, DecompositionSettings
    from .loop import DecompositionRunner
    from .metrics import RunnerMetrics

    parser = build_parser()
    args = parser.parse_args(argv)
    min_subtasks, max_subtasks, max_reasks = request_bounds(parser, args)
    configure_logging(args.log_format, args.log_level)
    try:
        credentials = security_from_args(args, server=False)
        # The same rule as the leader's (docs/architecture.md): no open endpoint on a public address by
        # accident.
        exposure = exposure_error("metrics", args.metrics_listen, credentials.token) if args.metrics_listen else None
        if exposure is not None and not args.insecure:
            raise ConfigError(exposure)
        if exposure is not None:
            print(f"{PROG}: warning: INSECURE: serving metrics on {args.metrics_listen} with no token (--insecure)",
                  file=sys.stderr)  # fmt: skip
        # The flags win; what they leave unset comes from the environment, as for every other caller
        # of DecompositionSettings, so a runner sends the same request as `paradecom run`.
        settings = DecompositionSettings.from_environment(args.model)
        settings = DecompositionSettings(
            model=args.model,
            min_subtasks=min_subtasks,
            max_subtasks=max_subtasks,
            max_reasks=max_reasks,
            structured_output=args.structured_output,
            max_tokens=settings.max_tokens,
            llm_timeout_s=settings.llm_timeout_s,
        )
        metrics = RunnerMetrics() if args.metrics_listen else None
        decomposer = Decomposer(settings, cache=None if args.no_cache else DecompositionCache(), metrics=metrics)
        runner = DecompositionRunner(
            args.leader,
            concurrency=args.concurrency,
            decomposer=decomposer,
            runner_id=args.runner_id,
            drain_timeout=args.drain_timeout,
            security=credentials,
            metrics=metrics,
        )
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(runner, early, args.metrics_listen, credentials.token))
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
