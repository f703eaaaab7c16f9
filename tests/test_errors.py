"""Errors become status codes in one place (leader/errors.py's table, applied by service.py
`_status`): what the leader refuses on purpose gets its code and its message; anything else,
a KeyError from a bug included, is INTERNAL with a generic message and logged with its traceback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import grpc
import pytest
import structlog
from helpers import Proc
from structlog.testing import LogCapture

from paradecom.errors import ProjectFileError
from paradecom.leader import errors, service
from paradecom.leader.lifecycle import LeaseConfig
from paradecom.leader.server import LeaderServer, LeaderSettings
from paradecom.leader.service import INTERNAL_MESSAGE, _status
from paradecom.v1 import (
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
)


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[MutableMapping[str, Any]]:
    """What the service logs, captured (its own logger: a logger cached by an earlier
    configuration in this process would escape structlog's capture_logs)."""
    capture = LogCapture()
    monkeypatch.setattr(service, "log", structlog.wrap_logger(None, processors=[capture]))
    return capture.entries


def _subclasses(cls: type[Exception]) -> Iterator[type[Exception]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_typed_error_has_a_status_from_the_table(logged: list[MutableMapping[str, Any]]) -> None:
    """Every error the leader raises on purpose (a `Refused`) is answered with a status of the
    table, not INTERNAL; an unknown task is NOT_FOUND though it is also a LeaseError."""
    for cls in _subclasses(errors.Refused):
        assert errors.status_name(cls("x")) is not None, cls
    expected = {
        errors.BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
        ProjectFileError: grpc.StatusCode.INVALID_ARGUMENT,
        errors.InvalidResult: grpc.StatusCode.INVALID_ARGUMENT,
        errors.NotFound: grpc.StatusCode.NOT_FOUND,
        errors.UnknownTask: grpc.StatusCode.NOT_FOUND,
        errors.TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.LeaseError: grpc.StatusCode.FAILED_PRECONDITION,
        errors.ProjectClosed: grpc.StatusCode.FAILED_PRECONDITION,
        errors.StaleLease: grpc.StatusCode.ABORTED,
    }
    for cls, code in expected.items():
        assert _status(cls("no project 'x'")) == (code, "no project 'x'"), cls
    assert logged == [], "a refusal is not an unexpected error"


@pytest.mark.parametrize(
    "error",
    [KeyError("no project 'x'"), KeyError(), LookupError("x"), AssertionError(), RuntimeError("disk I/O error")],
    ids=repr,
)
def test_anything_else_is_internal_and_logged_with_its_traceback(
    error: Exception, logged: list[MutableMapping[str, Any]]
) -> None:
    """A KeyError from a bug is not a "not found": INTERNAL, a message that tells nothing of the
    leader's insides, and the error logged with its traceback."""
    try:
        raise error
    except Exception as caught:
        code, message = _status(caught)
    assert (code, message) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    (entry,) = logged
    assert entry["event"] == "unexpected error" and entry["log_level"] == "error"
    assert entry["exc_info"] is error and error.__traceback__ is not None


def test_a_key_error_inside_a_handler_answers_internal(logged: list[MutableMapping[str, Any]]) -> None:
    """Over gRPC, on a real leader: a handler that hits a KeyError (a bug, injected here into the
    project summary) answers INTERNAL with the generic message, not NOT_FOUND, and the leader
    keeps serving the other calls."""

    async def scenario() -> None:
        server = LeaderServer(LeaderSettings(listen="127.0.0.1:0", db=":memory:", lease=LeaseConfig(), max_depth=3))
        address = await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                projects = project_service_pb2_grpc.ProjectServiceStub(channel)
                submitted = await projects.SubmitProject(
                    project_service_pb2.SubmitProjectRequest(
                        project=project_pb2.ProjectDefinition(name="P", description="A project.")
                    ),
                    timeout=10,
                )

                def broken(project_id: str) -> project_pb2.ProjectSummary:
                    nothing: dict[str, project_pb2.ProjectSummary] = {}
                    return nothing[project_id]  # the bug: a lookup of a key that is not there

                real = server.leader.summary
                server.leader.summary = broken
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await projects.GetProject(
                        project_service_pb2.GetProjectRequest(project_id=submitted.project_id), timeout=10
                    )
                assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
                (entry,) = [e for e in logged if e["log_level"] == "error"]
                assert entry["event"] == "unexpected error" and isinstance(entry["exc_info"], KeyError)
                server.leader.summary = real
                ok = await projects.GetProject(
                    project_service_pb2.GetProjectRequest(project_id=submitted.project_id), timeout=10
                )
                assert ok.project.project_id == submitted.project_id
        finally:
            await server.stop(0)

    asyncio.run(scenario())


def test_unknown_ids_answer_not_found_over_grpc(
    start_leader: Callable[..., tuple[Proc, str]], stubs: Callable[..., Any]
) -> None:
    """Every RPC that names a project or a task this leader does not have answers NOT_FOUND with a
    message naming it, from a real leader process; none of them is an unexpected error."""
    proc, address = start_leader()
    tasks, projects = stubs(address)
    unknown = "0123456789abcdef"
    project_calls: list[Callable[[], object]] = [
        lambda: projects.GetProject(project_service_pb2.GetProjectRequest(project_id=unknown), timeout=10),
        lambda: next(projects.WatchProject(project_service_pb2.WatchProjectRequest(project_id=unknown), timeout=10)),
        lambda: projects.GetTaskTree(project_service_pb2.GetTaskTreeRequest(project_id=unknown), timeout=10),
        lambda: projects.GetTaskTree(
            project_service_pb2.GetTaskTreeRequest(project_id=unknown, page_size=10), timeout=10
        ),
        lambda: projects.CancelProject(project_service_pb2.CancelProjectRequest(project_id=unknown), timeout=10),
    ]
    subtasks = [task_pb2.Subtask(key="1", title="Do the work")]
    task_calls: list[Callable[[], object]] = [
        lambda: tasks.SubmitResult(
            task_service_pb2.SubmitResultRequest(task_id="987654", lease_token="t", subtasks=subtasks), timeout=10
        ),
        lambda: tasks.ExtendLease(task_service_pb2.ExtendLeaseRequest(task_id="987654", lease_token="t"), timeout=10),
        lambda: tasks.ReleaseTask(task_service_pb2.ReleaseTaskRequest(task_id="987654", lease_token="t"), timeout=10),
        lambda: tasks.FailTask(task_service_pb2.FailTaskRequest(task_id="987654", lease_token="t"), timeout=10),
    ]
    for calls, needle in ((project_calls, f"no project '{unknown}'"), (task_calls, "no task '987654'")):
        for call in calls:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
            assert err.value.details() == needle
    batch = tasks.SubmitResults(
        task_service_pb2.SubmitResultsRequest(
            results=[task_service_pb2.SubmitResultRequest(task_id="987654", lease_token="t", subtasks=subtasks)]
        ),
        timeout=10,
    )
    (outcome,) = batch.outcomes
    assert (outcome.status_code, outcome.status_message) == (grpc.StatusCode.NOT_FOUND.value[0], "no task '987654'")
    assert '"unexpected error"' not in proc.stderr
