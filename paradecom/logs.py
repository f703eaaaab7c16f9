"""structlog set-up shared by every ParaDecom process: readable lines by default, JSON with
`--log-format json`, always on stderr (stdout is kept for a command's own output), and a processor
that masks secrets so no token or API key reaches a log line. Readable lines show the text they
quote (runner ids, titles, LLM errors) through `terminal_safe`, so a log on a terminal cannot be
made to rewrite it; JSON lines escape it anyway."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from paradecom.textsafe import terminal_safe

LogFormat = Literal["console", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("console", "json")

# Environment variables whose values must never be printed.
_SECRET_ENV = ("OPENAI_API_KEY", "PARADECOM_AUTH_TOKEN")
_REDACTED = "***"


def _secrets() -> list[str]:
    return [v for v in (os.environ.get(name, "") for name in _SECRET_ENV) if len(v) >= 4]


def _mask_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    secrets = _secrets()
    if not secrets:
        return event_dict
    for key, value in event_dict.items():
        if isinstance(value, str):
            for secret in secrets:
                if secret in value:
                    value = value.replace(secret, _REDACTED)
            event_dict[key] = value
    return event_dict


# Tracebacks keep their line breaks (the console renderer prints them under the line).
_MULTILINE_KEYS = ("exception", "stack")


def _terminal_safe_values(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Other values are printed with repr(), which escapes non-printable characters already.
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = terminal_safe(value, keep_newlines=key in _MULTILINE_KEYS, reversible=False)
    return event_dict


def configure_logging(fmt: LogFormat = "console", level: str = "info") -> None:
    """Route structlog to stderr in `fmt`, at `level` and above."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _mask_secrets,
            *([] if fmt == "json" else [_terminal_safe_values]),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
