"""argparse pieces shared by every ParaDecom command: one-line errors (exit 2, no usage dump, no
traceback) and typed flag values whose ranges are checked where they are parsed."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import NoReturn

# gRPC's C core writes its own info lines to stderr (a failed TLS handshake, for one), doubling the
# one-line errors our commands print. Set before grpc is first imported, which is why it is here:
# every command imports this module before anything that imports grpc. Only commands do it;
# importing the library leaves the process's environment alone. A user's setting wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# openai imports its optional aiohttp transport whenever aiohttp is installed, and it is (fake-llm and
# the embedded model's proxy use it): a quarter of a second of every command's start, before its
# first LLM request can leave (docs/performance.md, "Start-up"), for a transport no command uses
# (runner/llm.py lets openai make its default httpx client). A None entry makes that one import
# fail, so openai sets itself up as if aiohttp were absent; aiohttp itself stays importable. Only
# commands do it, for the same reason as above.
sys.modules.setdefault("openai._vendor.httpx_aiohttp", None)  # type: ignore[arg-type]

from paradecom import limits  # noqa: E402
from paradecom.client.run_settings import Runners, parse_runners  # noqa: E402
from paradecom.grpc_options import parse_address  # noqa: E402
from paradecom.logs import LOG_FORMATS  # noqa: E402
from paradecom.textsafe import terminal_safe  # noqa: E402


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: `PROG: error: MESSAGE`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {terminal_safe(message, reversible=False)}\n")


def int_range(low: int, high: int) -> Callable[[str], int]:
    """A flag type: a whole number from low to high inclusive."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: a whole number from {low} to {high}")
        return value

    parse.__name__ = "whole number"
    return parse


def float_range(low: float, high: float) -> Callable[[str], float]:
    """A flag type: a finite number of seconds (or other unit) from low to high inclusive."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range: a number from {low:g} to {high:g}")
        return value

    parse.__name__ = "number"
    return parse


def runners_flag(text: str) -> Runners:
    """A flag type: `--runners auto|N` (0 to MAX_RUNNERS)."""
    try:
        return parse_runners(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def address(text: str) -> str:
    """A flag type: HOST:PORT."""
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_logging_flags(parser: argparse.ArgumentParser, default_level: str = "info") -> None:
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="console",
        help="console: readable lines (default); json: one JSON object per line, for machines",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default=default_level,
        help=f"the least severe log lines shown (default {default_level})",
    )  # fmt: skip


def fail(prog: str, message: str) -> int:
    """Print a one-line error for a problem found after parsing; returns exit status 2. The message
    may quote a file's or a leader's text: control characters in it are shown escaped."""
    print(f"{prog}: error: {terminal_safe(message, reversible=False)}", file=sys.stderr)
    return 2


def add_request_flags(parser: argparse.ArgumentParser, *, scope: str = "") -> None:
    """--min-subtasks, --max-subtasks and --max-reasks: the fan-out and re-ask settings of an LLM
    request (runner/prompt.py `RequestSettings`), defined once for the leader, which sends them in
    every assignment, and the runner, which uses them for an assignment that carries no request.
    `scope` ends each help text's first part (the runner's says when they apply). Read them back
    with `request_bounds`."""
    from paradecom.runner.prompt import (
        DEFAULT_MAX_REASKS,
        DEFAULT_MAX_SUBTASKS,
        DEFAULT_MIN_SUBTASKS,
        ENV_MAX_REASKS,
        ENV_MAX_SUBTASKS,
        MAX_REASKS_LIMIT,
    )

    parser.add_argument(
        "--min-subtasks",
        type=int_range(1, limits.MAX_SUBTASKS),
        default=None,
        metavar="N",
        help=f"fewer valid subtasks than this make a task a leaf{scope} (default {DEFAULT_MIN_SUBTASKS}, "
        "or --max-subtasks if smaller)",
    )
    parser.add_argument(
        "--max-subtasks",
        type=int_range(1, limits.MAX_SUBTASKS),
        # A string default goes through `type`, so a bad environment value is a flag error.
        default=os.environ.get(ENV_MAX_SUBTASKS) or DEFAULT_MAX_SUBTASKS,
        metavar="N",
        help=f"more subtasks than this is an invalid answer, re-asked; the answer's schema says so too{scope} "
        f"(default ${ENV_MAX_SUBTASKS}, else {DEFAULT_MAX_SUBTASKS})",
    )
    parser.add_argument(
        "--max-reasks",
        type=int_range(0, MAX_REASKS_LIMIT),
        default=os.environ.get(ENV_MAX_REASKS) or DEFAULT_MAX_REASKS,
        metavar="N",
        help=f"times a bad answer is sent back with its errors, 0..{MAX_REASKS_LIMIT}{scope} "
        f"(default ${ENV_MAX_REASKS}, else {DEFAULT_MAX_REASKS})",
    )


def request_bounds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[int, int, int]:
    """(min_subtasks, max_subtasks, max_reasks) from the flags of `add_request_flags`; a minimum
    above the maximum is a flag error."""
    from paradecom.runner.prompt import DEFAULT_MIN_SUBTASKS

    low = min(DEFAULT_MIN_SUBTASKS, args.max_subtasks) if args.min_subtasks is None else args.min_subtasks
    if low > args.max_subtasks:
        parser.error(f"--min-subtasks {low} is more than --max-subtasks {args.max_subtasks}")
    return low, args.max_subtasks, args.max_reasks
