"""Values at their extremes, end to end over real gRPC (issue #12, defects 1 to 4): runner-reported
counts and timing bounded where they come in, stored values always readable (a store written with
values past the contract's integer types included, across a restart), ids and tokens parsed
strictly, and every accepted project readable back, in pages."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers import Proc, run_cli
from prometheus_client.parser import text_string_to_metric_families

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

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1


@dataclass
class Leader:
    """A leader process and blocking stubs to it, playing client, runner and operator by hand."""

    proc: Proc
    address: str
    channel: grpc.Channel
    tasks: task_service_pb2_grpc.TaskServiceStub
    projects: project_service_pb2_grpc.ProjectServiceStub
    admin: admin_service_pb2_grpc.AdminServiceStub
    streams: list[Any] = field(default_factory=list)

    def submit(self, seeds: int = 4, **fields: object) -> str:
        project = project_pb2.ProjectDefinition(
            name="Bounds", description="A project to push to the limits.",
            tasks=[project_pb2.TaskSpec(title=f"Seed task {i}") for i in range(seeds)], **fields,  # type: ignore[arg-type]
        )  # fmt: skip
        return self.projects.SubmitProject(
            project_service_pb2.SubmitProjectRequest(project=project), timeout=30
        ).project_id

    def leases(self, count: int) -> list[task_pb2.Lease]:
        """Take `count` leases on a stream of their own, kept open (a closed stream would shorten
        them to the disconnect grace) until the test ends."""
        self.streams.append(
            self.tasks.PullTask(
                task_service_pb2.PullTaskRequest(runner_id=f"bounds-{len(self.streams)}", max_in_flight=count),
                timeout=600,
            )
        )
        return [next(self.streams[-1]).assignment.lease for _ in range(count)]

    def summary(self, project_id: str) -> project_pb2.ProjectSummary:
        return self.projects.GetProject(
            project_service_pb2.GetProjectRequest(project_id=project_id), timeout=10
        ).project

    def budget(self) -> admin_service_pb2.LlmBudget:
        return self.admin.GetLlmBudget(admin_service_pb2.GetLlmBudgetRequest(), timeout=10).budget


@pytest.fixture
def leader(start_leader: Callable[..., tuple[Proc, str]]) -> Iterator[Leader]:
    proc, address = start_leader("--lease-timeout", "120", "--metrics-listen", "127.0.0.1:0")
    yield from _connect(proc, address)


def _connect(proc: Proc, address: str) -> Iterator[Leader]:
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    leader = Leader(
        proc, address, channel, task_service_pb2_grpc.TaskServiceStub(channel),
        project_service_pb2_grpc.ProjectServiceStub(channel), admin_service_pb2_grpc.AdminServiceStub(channel),
    )  # fmt: skip
    yield leader
    for stream in leader.streams:
        stream.cancel()
    channel.close()


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def details_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def lease_calls(
    leader: Leader, task_id: str, token: str, usage: task_pb2.Usage | None = None
) -> dict[str, Callable[[], object]]:
    """Every unary call about one lease (SubmitResult as a leaf), ready to make."""
    lease = task_pb2.Lease(task_id=task_id, token=token)
    t = leader.tasks
    return {
        "SubmitResult": lambda: t.SubmitResult(leaf(lease, usage), timeout=10),
        "FailTask": lambda: t.FailTask(
            task_service_pb2.FailTaskRequest(task_id=task_id, lease_token=token, usage=usage), timeout=10
        ),
        "ExtendLease": lambda: t.ExtendLease(
            task_service_pb2.ExtendLeaseRequest(task_id=task_id, lease_token=token, usage=usage), timeout=10
        ),
        "ReleaseTask": lambda: t.ReleaseTask(
            task_service_pb2.ReleaseTaskRequest(task_id=task_id, lease_token=token, usage=usage), timeout=10
        ),
    }


def leaf(lease: task_pb2.Lease, usage: task_pb2.Usage | None = None) -> task_service_pb2.SubmitResultRequest:
    """The smallest valid result: the task is a leaf."""
    return task_service_pb2.SubmitResultRequest(
        task_id=lease.task_id, lease_token=lease.token, stop_reason="atomic", usage=usage
    )


def no_unexpected_errors(proc: Proc) -> None:
    assert '"unexpected error"' not in proc.stderr, proc.stderr[-3000:]


def scrape(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples if not s.labels}


# Defect 1: counts bounded where they come in, totals never past int64, stored values readable.

USAGE_LIMITS = {
    "prompt_tokens": (limits.MAX_USAGE_TOKENS, INT64_MAX),
    "completion_tokens": (limits.MAX_USAGE_TOKENS, INT64_MAX),
    "calls": (limits.MAX_USAGE_COUNT, INT32_MAX),
    "reasks": (limits.MAX_USAGE_COUNT, INT32_MAX),
    "rate_limited": (limits.MAX_USAGE_COUNT, INT32_MAX),
    "cache_hits": (limits.MAX_USAGE_COUNT, INT32_MAX),
}


def test_usage_past_its_limit_is_refused_naming_the_field(leader: Leader) -> None:
    """Each Usage field just past its limit, at its type's maximum, and negative is INVALID_ARGUMENT
    naming the field (and the limit), in SubmitResult, SubmitResults (that result's outcome),
    FailTask, ExtendLease and ReleaseTask; nothing is added to the project. At the limit it is accepted and the
    totals are exact."""
    project_id = leader.submit(seeds=len(USAGE_LIMITS) + 1)
    leases = leader.leases(len(USAGE_LIMITS) + 1)
    for name, (high, type_max) in USAGE_LIMITS.items():
        for value in (high + 1, high * 10, type_max, -1, -type_max - 1):
            usage = task_pb2.Usage(**{name: value})
            lease = leases[0]
            calls = lease_calls(leader, lease.task_id, lease.token, usage)
            for rpc, call in calls.items():
                code, details = details_of(call)
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (rpc, name, value, code, details)
                assert f"usage.{name}" in details and f"{high:,}" in details, details
            batch = leader.tasks.SubmitResults(task_service_pb2.SubmitResultsRequest(results=[leaf(lease, usage)]))
            outcome = batch.outcomes[0]
            assert outcome.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0], (name, value, outcome)
            assert f"usage.{name}" in outcome.status_message
    assert leader.summary(project_id).usage == project_pb2.LlmUsage(), "nothing refused was counted"
    # At the limit: accepted, and the totals are the exact sums.
    for lease, (name, (high, _)) in zip(leases[1:], USAGE_LIMITS.items(), strict=True):
        leader.tasks.SubmitResult(leaf(lease, task_pb2.Usage(**{name: high})), timeout=10)
    totals = leader.summary(project_id).usage
    for name, (high, _) in USAGE_LIMITS.items():
        assert getattr(totals, name) == high, (name, totals)
    no_unexpected_errors(leader.proc)


def _prepare_huge_store(db: Path, project_id: str) -> None:
    """What an older leader could have written: totals past int64 (JSON), counters past int32,
    unknown usage names, a float, an absurd attempt count."""
    with sqlite3.connect(db) as con:
        usage = {"prompt_tokens": INT64_MAX - 5, "completion_tokens": 2**64 + 1, "calls": 10**30, "reasks": -7,
                 "rate_limited": 1.5e300, "failures": 2**63, "from_a_future_leader": 3}  # fmt: skip
        con.execute(
            "UPDATE projects SET usage = ?, late_results_refused = ?, leases_expired = ? WHERE id = ?",
            (json.dumps(usage), INT64_MAX, -(2**63), project_id),
        )
        con.execute("UPDATE tasks SET attempts = ? WHERE project_id = ? AND state = 'queued'", (INT64_MAX, project_id))


@pytest.mark.slow
def test_a_store_with_values_past_the_contract_stays_readable_after_a_restart(
    start_leader: Callable[..., tuple[Proc, str]], tmp_path: Path
) -> None:
    """A store holding usage totals past int64 (2**64, 10**30, a float, unknown names), counters
    past int32 and an attempt count of 2**63 - 1, read by a restarted leader: GetProject,
    ListProjects, WatchProject, GetTaskTree (whole and in pages), `paradecom status` (table and
    JSON) and the metrics all answer, each number clamped to its field; a result added then
    saturates its total at the int64 maximum instead of passing it."""
    db = tmp_path / "old.db"
    proc, address = start_leader("--lease-timeout", "120", db=db)
    for first in _connect(proc, address):
        project_id = first.submit(seeds=3)
    proc.stop()
    _prepare_huge_store(db, project_id)
    proc, address = start_leader("--lease-timeout", "120", "--metrics-listen", "127.0.0.1:0", db=db)
    for leader in _connect(proc, address):
        summary = leader.summary(project_id)
        assert summary.usage.prompt_tokens == INT64_MAX - 5
        assert summary.usage.completion_tokens == INT64_MAX and summary.usage.calls == INT64_MAX
        assert summary.usage.reasks == 0 and summary.usage.failures == INT64_MAX
        assert summary.late_results_refused == INT32_MAX and summary.leases_expired == 0
        listed = leader.projects.ListProjects(project_service_pb2.ListProjectsRequest(), timeout=10).projects
        assert [p.project_id for p in listed] == [project_id]
        watch = leader.projects.WatchProject(project_service_pb2.WatchProjectRequest(project_id=project_id), timeout=10)
        assert next(watch).project.usage.calls == INT64_MAX
        watch.cancel()
        tree = leader.projects.GetTaskTree(project_service_pb2.GetTaskTreeRequest(project_id=project_id), timeout=10)
        assert {t.attempts for t in tree.tasks} == {INT32_MAX}
        page = leader.projects.GetTaskTree(
            project_service_pb2.GetTaskTreeRequest(project_id=project_id, page_size=10), timeout=10
        )
        assert len(page.tasks) == 3 and not page.next_page_token
        for extra in ((), ("--json",)):
            done = run_cli([*PARADECOM, "status", "--leader", address, *extra])
            assert done.returncode == 0, done.stderr
            assert project_id in done.stdout
        metrics = scrape(proc.metrics_address())
        assert metrics["paradecom_llm_calls_total"] == float(INT64_MAX)
        # A report on top of INT64_MAX - 5 saturates the total.
        (lease,) = leader.leases(1)
        leader.tasks.SubmitResult(leaf(lease, task_pb2.Usage(prompt_tokens=10)), timeout=10)
        assert leader.summary(project_id).usage.prompt_tokens == INT64_MAX
        no_unexpected_errors(proc)


# Defect 2: one runner's Retry-After is bounded, visible and clearable.


@pytest.mark.parametrize("retry_after_ms", [limits.MAX_RETRY_AFTER_MS + 1, 365 * 24 * 3600 * 1000, INT64_MAX])
def test_a_long_retry_after_pauses_at_most_ten_minutes_and_set_budget_resumes(
    leader: Leader, retry_after_ms: int
) -> None:
    """A heartbeat reporting a 429 with a Retry-After past 10 minutes (just past, a year, the int64
    maximum) is accepted and taken as 10 minutes: GetLlmBudget answers (never UNKNOWN) with
    paused_ms at most 600,000 and paused_until_unix_ms that far ahead, the metric shows it, queued
    work waits; SetLlmBudget ends the pause and the waiting task is dispatched."""
    leader.submit(seeds=2)
    stream = leader.tasks.PullTask(task_service_pb2.PullTaskRequest(runner_id="paused", max_in_flight=2), timeout=60)
    leader.streams.append(stream)
    first = next(stream).assignment.lease
    second = next(stream).assignment.lease
    leader.tasks.ExtendLease(
        task_service_pb2.ExtendLeaseRequest(
            task_id=first.task_id, lease_token=first.token,
            usage=task_pb2.Usage(rate_limited=1, retry_after_ms=retry_after_ms),
        ),
        timeout=10,
    )  # fmt: skip
    before_ms = int(time.time() * 1000)
    budget = leader.budget()
    assert 590_000 < budget.paused_ms <= limits.MAX_RETRY_AFTER_MS, budget
    assert before_ms + 590_000 < budget.paused_until_unix_ms <= before_ms + limits.MAX_RETRY_AFTER_MS + 5_000, budget
    assert 590 < scrape(leader.proc.metrics_address())["paradecom_llm_paused_seconds"] <= 600
    # Both tasks back in the queue, where the pause keeps them.
    for lease in (first, second):
        leader.tasks.ReleaseTask(task_service_pb2.ReleaseTaskRequest(task_id=lease.task_id, lease_token=lease.token))
    assert leader.budget().paused_ms > 0
    leader.admin.SetLlmBudget(admin_service_pb2.SetLlmBudgetRequest(), timeout=10)
    budget = leader.budget()
    assert budget.paused_ms == 0 and budget.paused_until_unix_ms == 0, budget
    assert scrape(leader.proc.metrics_address())["paradecom_llm_paused_seconds"] == 0
    # Paused, this read would wait the 10 minutes and end with the stream's 60 s deadline.
    assert next(stream).WhichOneof("event") == "assignment"
    no_unexpected_errors(leader.proc)


def test_a_negative_retry_after_is_refused(leader: Leader) -> None:
    leader.submit(seeds=1)
    (lease,) = leader.leases(1)
    for value in (-1, -(2**63)):
        code, details = details_of(
            lambda v=value: leader.tasks.ExtendLease(  # type: ignore[misc]
                task_service_pb2.ExtendLeaseRequest(
                    task_id=lease.task_id,
                    lease_token=lease.token,
                    usage=task_pb2.Usage(rate_limited=1, retry_after_ms=v),
                ),
                timeout=10,
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "usage.retry_after_ms" in details, details
    assert leader.budget().paused_ms == 0


# Defect 3: ids and tokens that are not exactly what the leader gave.

NOT_IDS = ["\u0661\u0662\u0663", "\uff11\uff12", "\u00b2", "\u00b3", "\u07c1", " 12", "12 ", "+12", "1_000", "0x1",
           "-1", "1e3", "12\n", "0", "01", "9" * 19, "1" * 99, "\u0661", "\u0ed1"]  # fmt: skip


def _lookalikes(real: str) -> list[str]:
    """The same number in other digit characters, padded, signed: what int() would have read as it."""
    arabic = "".join(chr(0x0660 + int(c)) for c in real)
    fullwidth = "".join(chr(0xFF10 + int(c)) for c in real)
    return [arabic, fullwidth, f" {real}", f"{real} ", f"+{real}", f"0{real}", f"{real}\n", f"{real}_0", f"-{real}"]


def test_ids_and_tokens_that_are_not_the_leaders_are_refused_cleanly(leader: Leader) -> None:
    """Every id and token field, given other Unicode digits, signs, spaces, underscores, hex,
    leading zeros and long digit strings (and a real task id written in other digits, with its real
    lease token): INVALID_ARGUMENT or NOT_FOUND, never INTERNAL, never read as the number; inside
    a SubmitResults batch, that result's outcome too. The real lease is untouched afterwards."""
    project_id = leader.submit(seeds=2)
    lease, _ = leader.leases(2)
    cleanly = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    for task_id in NOT_IDS + _lookalikes(lease.task_id):
        fake = task_pb2.Lease(task_id=task_id, token=lease.token)
        for name, call in lease_calls(leader, task_id, lease.token).items():
            assert code_of(call) in cleanly, (name, task_id)
        outcome = leader.tasks.SubmitResults(
            task_service_pb2.SubmitResultsRequest(results=[leaf(fake), leaf(fake)]), timeout=10
        ).outcomes
        assert {o.status_code for o in outcome} <= {c.value[0] for c in cleanly}, (task_id, outcome)
    for token in NOT_IDS:
        for page_size in (0, 5):
            assert (
                code_of(
                    lambda t=token, s=page_size: leader.projects.ListProjects(  # type: ignore[misc]
                        project_service_pb2.ListProjectsRequest(page_token=t, page_size=s), timeout=10
                    )
                )
                == grpc.StatusCode.INVALID_ARGUMENT
            ), token
        assert (
            code_of(
                lambda t=token: leader.projects.GetTaskTree(  # type: ignore[misc]
                    project_service_pb2.GetTaskTreeRequest(project_id=project_id, page_size=5, page_token=t), timeout=10
                )
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        ), token
        for name, call in {
            "GetProject": lambda t=token: leader.projects.GetProject(
                project_service_pb2.GetProjectRequest(project_id=t), timeout=10
            ),
            "GetTaskTree": lambda t=token: leader.projects.GetTaskTree(
                project_service_pb2.GetTaskTreeRequest(project_id=t), timeout=10
            ),
            "CancelProject": lambda t=token: leader.projects.CancelProject(
                project_service_pb2.CancelProjectRequest(project_id=t), timeout=10
            ),
            "ExtendLease token": lambda t=token: leader.tasks.ExtendLease(
                task_service_pb2.ExtendLeaseRequest(task_id=lease.task_id, lease_token=t), timeout=10
            ),
        }.items():
            assert code_of(call) in {*cleanly, grpc.StatusCode.ABORTED}, (name, token)
    # The real lease was never touched by its lookalikes: still current, and its result is taken.
    assert leader.tasks.SubmitResult(leaf(lease), timeout=10).duplicate is False
    no_unexpected_errors(leader.proc)


# Defect 4: whatever the leader accepted, it can be read back.


def _distinct_words(tag: str, chars: int) -> str:
    """Text of `chars` characters whose words no sibling shares (siblings must not look alike)."""
    words, size, i = [], 0, 0
    while size < chars:
        word = f"{tag}w{i}"
        words.append(word)
        size += len(word) + 1
        i += 1
    return " ".join(words)[:chars].rstrip()


def _max_subtasks(level: int) -> list[task_pb2.Subtask]:
    """20 subtasks, each at the limit of every field: a description of 20,000 characters outside the
    Basic Multilingual Plane (4 bytes each in UTF-8), 100 criteria of 2,000, the longest reason, keys
    of 64 characters, up to 19 dependencies (acyclic), the largest estimate. All atomic but the first,
    so that only the first is decomposed further."""
    subtasks = []
    for i in range(1, limits.MAX_SUBTASKS + 1):
        tag = f"l{level}s{i}"
        subtasks.append(
            task_pb2.Subtask(
                key=f"{i:0{limits.MAX_KEY_CHARS}d}",
                title=_distinct_words(tag, limits.MAX_TITLE_CHARS),
                description=f"{tag} " + "\U0001f600" * (limits.MAX_DESCRIPTION_CHARS - len(tag) - 1),
                acceptance_criteria=[f"{tag}c{j} " + "x" * (limits.MAX_ITEM_CHARS - 12) for j in range(100)],
                depends_on=[f"{k:0{limits.MAX_KEY_CHARS}d}" for k in range(1, i)][: limits.MAX_SUBTASKS],
                atomic=i > 1,
                atomic_reason="r" * limits.MAX_ITEM_CHARS,
                estimate_hours=999_999.0,
            )
        )
    return subtasks


def _read_in_pages(leader: Leader, project_id: str) -> list[project_service_pb2.GetTaskTreeResponse]:
    pages, token = [], ""
    while True:
        page = leader.projects.GetTaskTree(
            project_service_pb2.GetTaskTreeRequest(
                project_id=project_id, page_size=limits.MAX_TREE_PAGE_SIZE, page_token=token
            ),
            timeout=120,
        )
        assert page.ByteSize() < limits.MAX_MESSAGE_BYTES
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages


def _max_definition() -> project_pb2.ProjectDefinition:
    """The longest name, description, goals and constraints, the deepest max_depth, and 10,000 seed
    tasks that fill the rest of the 32 MiB a definition may take, to the byte."""
    project = project_pb2.ProjectDefinition(
        name="N" * limits.MAX_NAME_CHARS,
        description="D" * limits.MAX_DESCRIPTION_CHARS,
        goals=[f"goal {i} " + "g" * (limits.MAX_ITEM_CHARS - 10) for i in range(limits.MAX_LIST_ITEMS)],
        constraints=[f"constraint {i} " + "c" * (limits.MAX_ITEM_CHARS - 20) for i in range(limits.MAX_LIST_ITEMS)],
        max_depth=limits.MAX_DEPTH_LIMIT,
    )
    project.tasks.extend(project_pb2.TaskSpec(title=f"Seed {i}") for i in range(limits.MAX_SEED_TASKS))
    # Each description costs its tag and a 2-byte length, and its seed a longer length of its own.
    fill = (limits.MAX_DEFINITION_BYTES - project.ByteSize()) // limits.MAX_SEED_TASKS - 4
    for seed in project.tasks:
        seed.description = "s" * fill
    for _ in range(4):  # to the byte (a longer description can take a longer length prefix)
        missing = limits.MAX_DEFINITION_BYTES - project.ByteSize()
        seed = project.tasks[0]
        seed.description = seed.description + "s" * missing if missing >= 0 else seed.description[:missing]
    assert project.ByteSize() == limits.MAX_DEFINITION_BYTES
    return project


def _decompose(leader: Leader, stream: Any, level: int) -> tuple[task_pb2.TaskAssignment, list[task_pb2.Subtask]]:
    """Take the next assignment on `stream` and submit 20 subtasks at the limits for it."""
    assignment = next(stream).assignment
    subtasks = _max_subtasks(level)
    request = task_service_pb2.SubmitResultRequest(
        task_id=assignment.lease.task_id, lease_token=assignment.lease.token, subtasks=subtasks
    )
    leader.tasks.SubmitResult(request, timeout=120)
    return assignment, subtasks


def _check_children(node: project_pb2.TaskNode, subtasks: list[task_pb2.Subtask]) -> None:
    assert [c.id for c in node.children] == [f"{node.id}.{i}" for i in range(1, limits.MAX_SUBTASKS + 1)]
    for i, (c, s) in enumerate(zip(node.children, subtasks, strict=True), start=1):
        assert (c.title, c.description, list(c.acceptance_criteria), c.atomic_reason, c.estimate_hours) == (
            s.title, s.description, list(s.acceptance_criteria), s.atomic_reason, s.estimate_hours,
        )  # fmt: skip
        assert list(c.depends_on) == [f"{node.id}.{k}" for k in range(1, i)]


@pytest.mark.slow
def test_a_project_at_every_limit_is_read_back_whole(leader: Leader) -> None:
    """Accepted implies readable. A project at the definition's size limit (32 MiB; one byte more is
    refused) with a seed decomposed into 20 subtasks at the limit of every field: its tree is over a
    message (about 75 MB). The whole tree in one message is RESOURCE_EXHAUSTED saying to read it in
    pages; the pages, each within the message limit, give back every task with its text exactly,
    and again once the project is cancelled. Then a chain of such results down to max_depth 10:
    whole and in pages, the same tree."""
    project = _max_definition()
    too_big = project_pb2.ProjectDefinition()
    too_big.CopyFrom(project)
    too_big.tasks[0].description += "s"
    code, details = details_of(
        lambda: leader.projects.SubmitProject(project_service_pb2.SubmitProjectRequest(project=too_big), timeout=120)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and f"{limits.MAX_DEFINITION_BYTES:,}" in details, details
    request = project_service_pb2.SubmitProjectRequest(project=project)
    project_id = leader.projects.SubmitProject(request, timeout=120).project_id
    stream = leader.tasks.PullTask(task_service_pb2.PullTaskRequest(runner_id="wide", max_in_flight=1), timeout=600)
    leader.streams.append(stream)
    _, subtasks = _decompose(leader, stream, 0)  # the first task granted is the first seed

    for cancelled in (False, True):
        if cancelled:
            leader.projects.CancelProject(project_service_pb2.CancelProjectRequest(project_id=project_id), timeout=60)
        whole_tree = project_service_pb2.GetTaskTreeRequest(project_id=project_id)
        code, details = details_of(lambda r=whole_tree: leader.projects.GetTaskTree(r, timeout=120))  # type: ignore[misc]
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "page_size" in details, (code, details)
        pages = _read_in_pages(leader, project_id)
        assert pages[0].definition == project and all(not p.HasField("definition") for p in pages[1:])
        assert sum(p.ByteSize() for p in pages) > limits.MAX_MESSAGE_BYTES
        tree = nested_tree(pages)
        assert [(t.title, t.description) for t in tree.tasks] == [(t.title, t.description) for t in project.tasks]
        _check_children(tree.tasks[0], subtasks)

    stream.cancel()  # its slot, freed by the cancellation, must not take the next project's tasks
    # Deep: a chain down to the depth limit, 20 subtasks at the limits at every level.
    chain_project = project_pb2.ProjectDefinition()
    chain_project.CopyFrom(project)
    del chain_project.tasks[:]
    request = project_service_pb2.SubmitProjectRequest(project=chain_project)
    chain_id = leader.projects.SubmitProject(request, timeout=60).project_id
    stream = leader.tasks.PullTask(task_service_pb2.PullTaskRequest(runner_id="deep", max_in_flight=1), timeout=600)
    leader.streams.append(stream)
    sent = [_decompose(leader, stream, level) for level in range(limits.MAX_DEPTH_LIMIT)]
    assert [a.depth for a, _ in sent] == list(range(limits.MAX_DEPTH_LIMIT))
    assert leader.summary(chain_id).state == project_pb2.PROJECT_STATE_DONE
    pages = _read_in_pages(leader, chain_id)
    whole = leader.projects.GetTaskTree(project_service_pb2.GetTaskTreeRequest(project_id=chain_id), timeout=120)
    tree = nested_tree(pages)
    assert list(tree.tasks) == list(whole.tasks) and len(pages) > 1
    node = tree.tasks[0]
    for _, subtasks in sent:
        _check_children(node, subtasks)
        node = node.children[0]
    assert node.depth == limits.MAX_DEPTH_LIMIT and node.stop_reason == "max depth reached"
    no_unexpected_errors(leader.proc)


def test_pages_give_the_same_tree_as_one_message(leader: Leader) -> None:
    """On a small project, reading one task a page gives exactly the nested tree of page_size 0;
    page_size past its limit and a token without a page_size are INVALID_ARGUMENT."""
    project_id = leader.submit(seeds=3)
    lease = leader.leases(1)[0]
    subtasks = [
        task_pb2.Subtask(key="a", title="Design the schema"),
        task_pb2.Subtask(key="b", title="Write the loader", depends_on=["a"]),
    ]
    leader.tasks.SubmitResult(
        task_service_pb2.SubmitResultRequest(task_id=lease.task_id, lease_token=lease.token, subtasks=subtasks),
        timeout=10,
    )
    whole = leader.projects.GetTaskTree(project_service_pb2.GetTaskTreeRequest(project_id=project_id), timeout=10)
    pages, token = [], ""
    while True:
        page = leader.projects.GetTaskTree(
            project_service_pb2.GetTaskTreeRequest(project_id=project_id, page_size=1, page_token=token), timeout=10
        )
        assert len(page.tasks) == 1
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    assert len(pages) == 5
    rebuilt = nested_tree(pages)
    assert list(rebuilt.tasks) == list(whole.tasks) and rebuilt.definition == whole.definition
    assert [d for c in rebuilt.tasks[lease_position(whole, lease)].children for d in c.depends_on] == [
        whole.tasks[lease_position(whole, lease)].children[0].id
    ]
    for request in (
        project_service_pb2.GetTaskTreeRequest(project_id=project_id, page_size=limits.MAX_TREE_PAGE_SIZE + 1),
        project_service_pb2.GetTaskTreeRequest(project_id=project_id, page_size=-1),
        project_service_pb2.GetTaskTreeRequest(project_id=project_id, page_token=pages[0].next_page_token),
    ):
        assert code_of(lambda r=request: leader.projects.GetTaskTree(r, timeout=10)) == (  # type: ignore[misc]
            grpc.StatusCode.INVALID_ARGUMENT
        )


def lease_position(tree: project_service_pb2.GetTaskTreeResponse, lease: task_pb2.Lease) -> int:
    """Index of the top-level task that was decomposed (the one with children)."""
    return next(i for i, t in enumerate(tree.tasks) if t.children)
