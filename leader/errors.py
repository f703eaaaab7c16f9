"""The errors the leader raises on purpose, and the one table that gives each its gRPC status.

A handler raises one of these to refuse a request; `leader/service.py` (`_status`) answers it
with the status `STATUS_CODES` gives its class and the error's own message, which is written for
the client (it names the field or the id, never the leader's internals). Anything else that
escapes a handler (a `KeyError` from a bug, a full disk) is not a refusal: it is answered INTERNAL
with a generic message and logged with its traceback.

The table names each status by its `grpc.StatusCode` name, so that the lifecycle and
`DecompositionLeader`, which raise these errors, stay free of the transport (neither imports grpc).
"""

from __future__ import annotations

from typing import Literal

from paradecom.errors import ProjectFileError

StatusName = Literal["INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED"]


class Refused(Exception):
    """A request the leader refuses on purpose: answered with its class's status and this message.
    Raised only as one of the classes below, each of which has its status in `STATUS_CODES`."""


class BadRequest(Refused):
    """A request field is missing or out of range."""


class NotFound(Refused):
    """The request names a project or a task this leader does not have."""


class TooLarge(Refused):
    """The answer would not fit in a message."""


class LeaseError(Refused):
    """A request about a task that the lease rules refuse."""


class UnknownTask(NotFound, LeaseError):
    """No task has this id. A LeaseError too, so a group commit refuses it on its own
    (`TaskLifecycle.accept_many`) instead of rolling the group back."""


class StaleLease(LeaseError):
    """The token is not the task's current lease: expired, reassigned, released or never issued."""

    # The refusal is counted, and an expired lease found here is requeued on the spot: those
    # changes are committed although the request is refused (see Store.transaction).
    keep_changes = True


class ProjectClosed(LeaseError):
    """The task's project was cancelled."""


class InvalidResult(LeaseError):
    """A result whose subtasks break the structural rules (keys, titles, dependencies)."""


# Each error's status, once. A class not listed takes the entry of its nearest listed base
# (`status_name`); an error that is neither listed nor derived from a listed class is INTERNAL.
STATUS_CODES: dict[type[Exception], StatusName] = {
    BadRequest: "INVALID_ARGUMENT",
    ProjectFileError: "INVALID_ARGUMENT",
    InvalidResult: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    UnknownTask: "NOT_FOUND",
    TooLarge: "RESOURCE_EXHAUSTED",
    LeaseError: "FAILED_PRECONDITION",
    ProjectClosed: "FAILED_PRECONDITION",
    StaleLease: "ABORTED",
}


def status_name(exc: BaseException) -> StatusName | None:
    """The status name `exc` is answered with, or None when it is not an error the leader raises
    on purpose (then the answer is INTERNAL)."""
    for cls in type(exc).__mro__:
        name = STATUS_CODES.get(cls)
        if name is not None:
            return name
    return None
