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
