"""Logging for every ParaDecom module, whether a ParaDecom command or another program runs it.

Modules take their logger from `get_logger(name)`. Where a ParaDecom command configured logging
(`configure_logging`: readable lines by default, JSON with `--log-format json`, always on stderr,
since stdout is kept for a command's own output), its lines go there. Where ParaDecom is a library
(`parallel_decompose_project` in someone's program) nothing is configured, and its lines go to the
standard library's `logging`, under loggers named `paradecom.*`: the application decides where they
go and what level shows, as it does for every other library. An application that configured nothing
sees warnings and errors on stderr (Python's last-resort handler), never anything on stdout.
Why not configure structlog in the library: its configuration is one per process and belongs to
the application, whose own structlog loggers would change with it.

Whatever the path, secrets are masked before a line leaves (`_mask_secrets`): no token or API key
reaches a log line. Readable lines show the text they quote (runner ids, titles, LLM errors)
through `terminal_safe`, so a log on a terminal cannot be made to rewrite it; JSON lines escape it
anyway."""

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


def _masked(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, _REDACTED)
    return value


def _mask_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    secrets = _secrets()
    if not secrets:
        return event_dict
    for key, value in event_dict.items():
        event_dict[key] = _masked(value, secrets)
    return event_dict


# Tracebacks keep their line breaks (the console renderer prints them under the line).
_MULTILINE_KEYS = ("exception", "stack")


def _terminal_safe_values(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Other values are printed with repr(), which escapes non-printable characters already.
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = terminal_safe(value, keep_newlines=key in _MULTILINE_KEYS, reversible=False)
    return event_dict


# Library use (structlog not configured): rendered to one line, then handed to stdlib logging,
# whose handlers add the time, the level and the logger's name as the application chose.
_LIBRARY_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    structlog.processors.format_exc_info,
    _mask_secrets,
    _terminal_safe_values,
    structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0),
]


class Logger:
    """A module's logger (`get_logger`): the structlog configuration of the process when there is
    one (a ParaDecom command's, or the application's), else stdlib logging. The event and the
    values a line is given are masked here already, so an application's own structlog
    configuration, which knows nothing of ParaDecom's secrets, never receives them."""

    def __init__(self, name: str) -> None:
        self._configured: Any = structlog.get_logger(name)
        self._library: Any = structlog.wrap_logger(
            logging.getLogger(name),
            processors=_LIBRARY_PROCESSORS,
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )

    def _log(self, method: str, event: str, values: dict[str, Any]) -> None:
        target = self._configured if structlog.is_configured() else self._library
        secrets = _secrets()
        if secrets:
            event = _masked(event, secrets)
            values = {key: _masked(value, secrets) for key, value in values.items()}
        getattr(target, method)(event, **values)

    def debug(self, event: str, /, **values: Any) -> None:
        self._log("debug", event, values)

    def info(self, event: str, /, **values: Any) -> None:
        self._log("info", event, values)

    def warning(self, event: str, /, **values: Any) -> None:
        self._log("warning", event, values)

    def error(self, event: str, /, **values: Any) -> None:
        self._log("error", event, values)

    def exception(self, event: str, /, **values: Any) -> None:
        """An error with the traceback of the exception being handled."""
        self._log("exception", event, values)


def get_logger(name: str) -> Logger:
    """The logger of module `name` (`paradecom.runner`, ...): see the module's docstring."""
    return Logger(name)


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
