"""`paradecom status`: a leader's projects and runners, as a table for people or JSON for programs.

Names, runner ids and peers come from users and runners: the table shows them through
`terminal_safe` (control characters and bidi overrides escaped, `\\x1b`); the JSON keeps them exact
(json.dumps escapes every non-ASCII character)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from paradecom.textsafe import terminal_safe
from paradecom.v1 import admin_service_pb2, project_pb2

# Longer names (counted once escaped) are cut in the table (the JSON keeps them whole).
NAME_WIDTH = 40


def _state(state: project_pb2.ProjectState.ValueType) -> str:
    return project_pb2.ProjectState.Name(state).removeprefix("PROJECT_STATE_").lower()


def status_json(
    projects: Sequence[project_pb2.ProjectSummary], runners: Sequence[admin_service_pb2.RunnerInfo]
) -> dict[str, Any]:
    """{"projects": [...], "runners": [...]}, one object per project and per runner."""
    return {
        "projects": [
            {
                "project_id": p.project_id,
                "name": p.name,
                "state": _state(p.state),
                "done": p.done,
                "total": p.total,
                "leased": p.leased,
                "queued": p.queued,
                "dead": p.dead,
                "cancelled": p.cancelled,
                "created_at_unix_ms": p.created_at_unix_ms,
            }
            for p in projects
        ],
        "runners": [
            {
                "runner_id": r.runner_id,
                "connected": r.connected,
                "in_flight": r.in_flight,
                "max_in_flight": r.max_in_flight,
                "peer": r.peer,
                "connected_at_unix_ms": r.connected_at_unix_ms,
            }
            for r in runners
        ],
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (header, *rows)]


def _cut(text: str, width: int) -> str:
    """terminal_safe(text), cut to `width` characters with "…", never inside an escape."""
    if len(terminal_safe(text)) <= width:
        return terminal_safe(text)
    shown = ""
    for char in text:
        piece = terminal_safe(char)
        if len(shown) + len(piece) > width - 1:
            break
        shown += piece
    return shown + "…"


def render_status(
    projects: Sequence[project_pb2.ProjectSummary], runners: Sequence[admin_service_pb2.RunnerInfo]
) -> str:
    """Two plain tables, projects (newest first) then runners."""
    lines: list[str] = []
    if projects:
        lines += _table(
            ("PROJECT", "NAME", "STATE", "DONE/TOTAL", "LEASED", "QUEUED", "DEAD"),
            [
                (
                    terminal_safe(p.project_id),
                    _cut(p.name, NAME_WIDTH),
                    _state(p.state),
                    f"{p.done}/{p.total}",
                    str(p.leased),
                    str(p.queued),
                    str(p.dead),
                )
                for p in projects
            ],
        )
    else:
        lines.append("no projects")
    lines.append("")
    if runners:
        lines += _table(
            ("RUNNER", "CONNECTED", "IN FLIGHT", "MAX", "PEER"),
            [
                (
                    terminal_safe(r.runner_id),
                    "yes" if r.connected else "no (grace)",
                    str(r.in_flight),
                    str(r.max_in_flight) if r.connected else "-",
                    terminal_safe(r.peer) or "-",
                )
                for r in runners
            ],
        )
    else:
        lines.append("no runners")
    return "\n".join(lines)
