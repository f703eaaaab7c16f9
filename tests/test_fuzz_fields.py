"""A property over every integer and string field of every request of ProjectService, TaskService
and AdminService (issue #12): start from a request the leader would accept (a real project id, a
lease granted a moment ago, a valid result) and set any of its integer and string fields, at any
depth, to a value at the edge of its kind: the type's extremes, the documented limits and one past
them, other Unicode digits, signs and spaces around real ids, text one character past a length
limit. Against one real leader over gRPC: no call ends INTERNAL or UNKNOWN, the leader never logs
an unexpected error, and afterwards every project it holds reads back (GetProject, ListProjects,
WatchProject, GetTaskTree whole or in pages).

tests/test_fuzz.py fuzzes whole random messages, which rarely get past the first check; this one
keeps requests valid but for the fields it changes, so the values reach the sums, the stored rows
and the budget behind those checks.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from helpers import Proc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import ACCEPTABLE, CHANNEL_OPTIONS, INT_RANGES, call

from paradecom import limits
from paradecom.client.leader_client import nested_tree
from paradecom.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

EXAMPLES = 150
SERVICES = [
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"],
    project_service_pb2.DESCRIPTOR.services_by_name["ProjectService"],
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
]
METHODS = [m for s in SERVICES for m in s.methods]
SUPPLY_RUNNER = "property-supply"
# Every documented limit, so that values land on it and one past it.
LIMITS = sorted(
    {
        limits.MAX_USAGE_TOKENS, limits.MAX_USAGE_COUNT, limits.MAX_RETRY_AFTER_MS, limits.MAX_CONCURRENCY,
        limits.MAX_BATCH, limits.MAX_TREE_PAGE_SIZE, limits.MAX_TASKS_PER_PROJECT, limits.MAX_PROJECT_TOKENS,
        limits.MAX_DEPTH_LIMIT, limits.MAX_RPM, limits.MAX_TPM, limits.MAX_SUBTASKS, 1_000,
    }
)  # fmt: skip
TEXT_LIMITS = sorted(
    {
        limits.MAX_KEY_CHARS, limits.MAX_NAME_CHARS, limits.MAX_TITLE_CHARS, limits.MAX_RUNNER_ID_CHARS,
        limits.MAX_ITEM_CHARS, limits.MAX_ERROR_CHARS, limits.MAX_DESCRIPTION_CHARS, 100,
    }
)  # fmt: skip
DIGITS = st.characters(categories=("Nd", "No", "Nl"))


@dataclass
class Leader:
    proc: Proc
    channel: grpc.Channel
    tasks: task_service_pb2_grpc.TaskServiceStub
    projects: project_service_pb2_grpc.ProjectServiceStub
    admin: admin_service_pb2_grpc.AdminServiceStub
    leases: queue.Queue[task_pb2.Lease] = field(default_factory=queue.Queue)
    ids: list[str] = field(default_factory=list)

    def supply_project(self) -> str:
        project = project_pb2.ProjectDefinition(
            name="Property supply", description="Tasks to lease.", max_depth=2,
            tasks=[project_pb2.TaskSpec(title=f"Supply task {i}") for i in range(40)],
        )  # fmt: skip
        request = project_service_pb2.SubmitProjectRequest(project=project)
        project_id = self.projects.SubmitProject(request, timeout=30).project_id
        self.ids.append(project_id)
        return project_id

    def lease(self) -> task_pb2.Lease:
        """A lease granted a moment ago (the supply stream keeps up to 8 at hand)."""
        for _ in range(4):
            try:
                # Leases a fuzzed PullTask took and dropped can hold the AIMD cap's slots until the
                # disconnect grace (3 s: half the lease timeout) ends them.
                return self.leases.get(timeout=4)
            except queue.Empty:  # or the supply project was finished or cancelled by an earlier example
                self.supply_project()
        budget = self.admin.GetLlmBudget(admin_service_pb2.GetLlmBudgetRequest(), timeout=10)
        runners = self.admin.ListRunners(admin_service_pb2.ListRunnersRequest(), timeout=10)
        projects = self.projects.ListProjects(project_service_pb2.ListProjectsRequest(page_size=5), timeout=10)
        raise AssertionError(f"no lease granted: dispatch is stuck\n{budget}\n{runners}\n{projects}")


def _read_supply(stream: Any, leases: queue.Queue[task_pb2.Lease]) -> None:
    try:
        for message in stream:
            leases.put(message.assignment.lease)
    except grpc.RpcError:
        pass  # cancelled at the end of the module, or replaced by a fuzzed PullTask of the same id


@pytest.fixture(scope="module")
def leader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leader]:
    db = tmp_path_factory.mktemp("property") / "leader.db"
    proc = Proc([sys.executable, "-m", "paradecom.leader.main", "--listen", "127.0.0.1:0", "--db", str(db),
                 "--log-format", "json", "--lease-timeout", "6"])  # fmt: skip
    try:
        channel = grpc.insecure_channel(proc.address(), options=CHANNEL_OPTIONS)
        t = Leader(
            proc, channel, task_service_pb2_grpc.TaskServiceStub(channel),
            project_service_pb2_grpc.ProjectServiceStub(channel), admin_service_pb2_grpc.AdminServiceStub(channel),
        )  # fmt: skip
        t.supply_project()
        stream = t.tasks.PullTask(task_service_pb2.PullTaskRequest(runner_id=SUPPLY_RUNNER, max_in_flight=8))
        threading.Thread(target=_read_supply, args=(stream, t.leases), daemon=True).start()
        yield t
        stream.cancel()
        channel.close()
    finally:
        proc.stop()


def int_values(f: pb_descriptor.FieldDescriptor) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[f.type]
    edges = [low, high, -1, 0, 1, 2, *LIMITS, *(n + 1 for n in LIMITS), *(n - 1 for n in LIMITS)]
    return st.one_of(st.sampled_from([v for v in edges if low <= v <= high]), st.integers(low, high))


def text_values(real: list[str]) -> st.SearchStrategy[str]:
    """Ids and tokens near the real ones, numbers in other scripts, text at and past the limits.
    Real ids are picked by index, so the choices hypothesis records do not depend on how many exist."""
    a_real = st.integers(0, 7).map(lambda i: real[i % len(real)])
    near_real = st.tuples(a_real, st.sampled_from(["", " ", "+", "-", "0", "\n", "_0", "\x00"]), st.booleans()).map(
        lambda t: t[1] + t[0] if t[2] else t[0] + t[1]
    )
    other_digits = a_real.map(lambda r: "".join(chr(0x0660 + int(c)) if c in "0123456789" else c for c in r))
    lengths = st.sampled_from([n + d for n in TEXT_LIMITS for d in (0, 1)])
    return st.one_of(
        a_real,
        near_real,
        other_digits,
        st.text(DIGITS, min_size=1, max_size=25),
        st.sampled_from(["", " 12", "+12", "1_000", "0x1", "-1", "1e3", "9" * 19, "9" * 400, "0", "\u202e1"]),
        st.text(max_size=30),
        st.tuples(lengths, st.sampled_from(["x", "\U0001f600", "\u0661", "a "])).map(lambda t: t[1] * t[0]),
    )


def leaf_paths(d: pb_descriptor.Descriptor, depth: int = 0) -> list[tuple[pb_descriptor.FieldDescriptor, ...]]:
    """Every integer and string field reachable from `d` (repeated ones through their first element)."""
    paths: list[tuple[pb_descriptor.FieldDescriptor, ...]] = []
    for f in d.fields:
        if f.type == f.TYPE_MESSAGE:
            if depth < 3:
                assert f.message_type is not None
                paths += [(f, *rest) for rest in leaf_paths(f.message_type, depth + 1)]
        elif f.type == f.TYPE_STRING or f.type in INT_RANGES:
            paths.append((f,))
    return paths


def set_path(msg: pb_message.Message, path: tuple[pb_descriptor.FieldDescriptor, ...], value: object) -> None:
    for f in path[:-1]:
        if f.is_repeated:
            items = getattr(msg, f.name)
            msg = items[0] if len(items) else items.add()
        else:
            msg = getattr(msg, f.name)
    last = path[-1]
    if last.is_repeated:
        items = getattr(msg, last.name)
        if len(items):
            items[0] = value
        else:
            items.append(value)
    else:
        setattr(msg, last.name, value)


def baseline(
    leader: Leader, method: pb_descriptor.MethodDescriptor
) -> tuple[pb_message.Message, task_pb2.Lease | None]:
    """A request to `method` that the leader would accept as it is, and the lease it names."""
    usage = task_pb2.Usage(prompt_tokens=100, completion_tokens=50, calls=1, reasks=0, rate_limited=0, cache_hits=0)
    project_id = leader.ids[0]
    name = method.name
    if name in ("SubmitResult", "SubmitResults", "ExtendLease", "ReleaseTask", "FailTask"):
        lease = leader.lease()
        subtasks = [
            task_pb2.Subtask(key="a", title="Design the storage layer", description="Tables.",
                             acceptance_criteria=["Schema reviewed"], atomic_reason="", estimate_hours=3.0),
            task_pb2.Subtask(key="b", title="Write the import job", depends_on=["a"], atomic=True),
        ]  # fmt: skip
        result = task_service_pb2.SubmitResultRequest(
            task_id=lease.task_id, lease_token=lease.token, subtasks=subtasks, usage=usage
        )
        requests: dict[str, pb_message.Message] = {
            "SubmitResult": result,
            "SubmitResults": task_service_pb2.SubmitResultsRequest(results=[result]),
            "ExtendLease": task_service_pb2.ExtendLeaseRequest(
                task_id=lease.task_id, lease_token=lease.token, usage=task_pb2.Usage(calls=1, retry_after_ms=5)
            ),
            "ReleaseTask": task_service_pb2.ReleaseTaskRequest(task_id=lease.task_id, lease_token=lease.token),
            "FailTask": task_service_pb2.FailTaskRequest(
                task_id=lease.task_id, lease_token=lease.token, error="boom", retryable=True, usage=usage
            ),
        }
        return requests[name], lease
    others: dict[str, pb_message.Message] = {
        "PullTask": task_service_pb2.PullTaskRequest(runner_id="property-runner", max_in_flight=1, max_batch=2),
        "SubmitProject": project_service_pb2.SubmitProjectRequest(
            project=project_pb2.ProjectDefinition(
                name="Property",
                description="A project.",
                goals=["g"],
                constraints=["c"],
                max_depth=1,
                max_tasks=100,
                max_tokens=1_000_000,
                tasks=[project_pb2.TaskSpec(title="Seed", description="d", acceptance_criteria=["a"])],
            )
        ),
        "GetProject": project_service_pb2.GetProjectRequest(project_id=project_id),
        "ListProjects": project_service_pb2.ListProjectsRequest(page_size=2),
        "WatchProject": project_service_pb2.WatchProjectRequest(project_id=project_id),
        "GetTaskTree": project_service_pb2.GetTaskTreeRequest(project_id=project_id, page_size=5),
        "CancelProject": project_service_pb2.CancelProjectRequest(project_id=leader.ids[-1]),
        "GetLlmBudget": admin_service_pb2.GetLlmBudgetRequest(),
        "SetLlmBudget": admin_service_pb2.SetLlmBudgetRequest(requests_per_minute=600, tokens_per_minute=0),
        "ListRunners": admin_service_pb2.ListRunnersRequest(),
    }
    return others[name], None


def tidy(leader: Leader, lease: task_pb2.Lease | None) -> None:
    """Undo what an example may have left in the way of the next: its lease held, dispatch paused
    or throttled by a fuzzed budget or Retry-After."""
    if lease is not None:
        release = task_service_pb2.ReleaseTaskRequest(task_id=lease.task_id, lease_token=lease.token)
        try:
            leader.tasks.ReleaseTask(release, timeout=10)
        except grpc.RpcError as exc:  # settled by the example: fine
            assert exc.code() in ACCEPTABLE, exc
    leader.admin.SetLlmBudget(admin_service_pb2.SetLlmBudgetRequest(), timeout=10)


def read_back_everything(leader: Leader) -> int:
    """Every project the leader holds, read every way a client can; the number of projects."""
    seen, token = 0, ""
    while True:
        page = leader.projects.ListProjects(project_service_pb2.ListProjectsRequest(page_token=token), timeout=30)
        for p in page.projects:
            assert leader.projects.GetProject(project_service_pb2.GetProjectRequest(project_id=p.project_id))
            watch = leader.projects.WatchProject(project_service_pb2.WatchProjectRequest(project_id=p.project_id))
            assert next(watch).project.project_id == p.project_id
            watch.cancel()
            whole = leader.projects.GetTaskTree(project_service_pb2.GetTaskTreeRequest(project_id=p.project_id))
            pages, tree_token = [], ""
            while True:
                request = project_service_pb2.GetTaskTreeRequest(
                    project_id=p.project_id, page_size=7, page_token=tree_token
                )
                pages.append(leader.projects.GetTaskTree(request, timeout=30))
                tree_token = pages[-1].next_page_token
                if not tree_token:
                    break
            assert len(list(nested_tree(pages).tasks)) == len(whole.tasks)
            seen += 1
        token = page.next_page_token
        if not token:
            return seen


@pytest.mark.slow
def test_any_field_at_its_edge_gets_a_proper_status_and_leaves_everything_readable(leader: Leader) -> None:
    """Requests valid but for a few integer and string fields set to edge values (see the module's
    docstring), to every RPC of the three services: never INTERNAL or UNKNOWN, never an unexpected
    error in the leader's log; then every project reads back every way."""
    seen: dict[str, dict[str, int]] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(st.data())
    def prop(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(METHODS), label="method")
        request, lease = baseline(leader, method)
        real = [*leader.ids[-3:], *([lease.task_id, lease.token] if lease else [])]
        paths = leaf_paths(method.input_type)
        chosen = (
            data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=4, unique=True), label="fields")
            if paths
            else []  # GetLlmBudget, ListRunners: nothing to set
        )
        for path in chosen:
            last = path[-1]
            strategy = text_values(real) if last.type == last.TYPE_STRING else int_values(last)
            set_path(request, path, data.draw(strategy, label=".".join(f.name for f in path)))
        try:
            code = call(leader.channel, method, request)
            counts = seen.setdefault(method.name, {})
            counts[code.name] = counts.get(code.name, 0) + 1
            assert code in ACCEPTABLE, f"{method.name} answered {code.name} to {str(request)[:800]!r}"
            assert '"unexpected error"' not in leader.proc.stderr, leader.proc.stderr[-3000:]
        finally:
            tidy(leader, lease)

    # Every method once as its baseline, so each is reached whatever hypothesis draws.
    for method in METHODS:
        request, lease = baseline(leader, method)
        try:
            code = call(leader.channel, method, request)
            assert code in ACCEPTABLE, f"{method.name} answered {code.name} to its baseline"
        finally:
            tidy(leader, lease)
    prop()
    assert read_back_everything(leader) >= 1
    assert '"unexpected error"' not in leader.proc.stderr, leader.proc.stderr[-3000:]
    print(seen)


def test_the_property_reaches_every_field() -> None:
    """The property's field list covers every integer and string field of every request, nested
    ones included (Usage in each result, Subtask, ProjectDefinition, TaskSpec)."""
    names = {".".join(f.name for f in p) for m in METHODS for p in leaf_paths(m.input_type)}
    for expected in ("usage.prompt_tokens", "usage.retry_after_ms", "subtasks.key", "subtasks.depends_on",
                     "results.usage.cache_hits", "results.task_id", "project.max_tokens", "project.tasks.title",
                     "page_token", "page_size", "runner_id", "max_batch", "requests_per_minute"):  # fmt: skip
        assert expected in names, (expected, sorted(names))
