"""The Store contract (`leader/store.py` `Store`): every guarantee its docstrings state, checked
against every implementation, each by a test that fails when that guarantee breaks.

A new store joins by adding itself to BACKENDS, and to PERSISTENT when it keeps its data past
`close` and lets a second store read it (the PostgreSQL store of #14 will be both).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from paradecom.leader.errors import StaleLease
from paradecom.leader.store import (
    CANCELLED,
    DEAD,
    DONE,
    LEASED,
    P_CANCELLED,
    P_DONE,
    QUEUED,
    RUNNING,
    ProjectRow,
    SqliteStore,
    Store,
    TaskRow,
)


@dataclasses.dataclass(frozen=True)
class Backend:
    """How to open a store: `open(directory)` twice on the same directory gives two stores on the
    same data (for a store that keeps none past close, two empty stores)."""

    name: str
    open: Callable[[Path], Store]


MEMORY = Backend("sqlite-memory", lambda _directory: SqliteStore(":memory:"))
FILE = Backend("sqlite-file", lambda directory: SqliteStore(directory / "leader.db"))
BACKENDS = [MEMORY, FILE]
PERSISTENT = [FILE]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = request.param.open(tmp_path)
    yield s
    s.close()


@pytest.fixture(params=PERSISTENT, ids=lambda b: b.name)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens stores on one set of data, each closed at the end of the test."""
    opened: list[Store] = []

    def open_store() -> Store:
        s: Store = request.param.open(tmp_path)
        opened.append(s)
        return s

    yield open_store
    for s in opened:
        s.close()


def project(project_id: str = "p1", seq: int = 1, *, state: str = RUNNING) -> ProjectRow:
    return ProjectRow(
        id=project_id,
        seq=seq,
        name=f"Project {project_id}",
        definition=b"\x0a\x07Project" + project_id.encode(),
        max_depth=3,
        state=state,
        error="",
        created_ms=1_000 + seq,
        finished_ms=0,
        counts={QUEUED: 2},
        usage={"calls": 1},
        max_tasks=50,
        max_tokens=9_000,
    )


def task(
    project_id: str,
    path: str,
    *,
    parent_id: int | None = None,
    state: str = QUEUED,
    not_before_ms: int = 0,
    lease_expires_ms: int | None = None,
    runner_id: str | None = None,
) -> TaskRow:
    position = int(path.rsplit(".", 1)[-1])
    return TaskRow(
        id=0,
        project_id=project_id,
        parent_id=parent_id,
        path=path,
        position=position,
        depth=path.count("."),
        key=str(position),
        title=f"Task {path}",
        description=f"What {path} covers.",
        acceptance_criteria=[f"{path} works", "it is tested"],
        depends_on=[str(position - 1)] if position > 1 else [],
        atomic=position % 2 == 0,
        atomic_reason="small" if position % 2 == 0 else "",
        estimate_hours=1.5,
        state=state,
        not_before_ms=not_before_ms,
        lease_token="tok-" + path if state == LEASED else None,
        lease_expires_ms=lease_expires_ms,
        runner_id=runner_id,
    )


def seeded(store: Store, *tasks: TaskRow, project_id: str = "p1", seq: int = 1) -> list[int]:
    """A project with `tasks`, committed; returns the tasks' ids."""
    with store.transaction():
        store.insert_project(project(project_id, seq))
        return list(store.insert_tasks(list(tasks)))


def read_project(store: Store, project_id: str = "p1") -> ProjectRow:
    row = store.get_project(project_id)
    assert row is not None
    return row


def read_task(store: Store, task_id: int) -> TaskRow:
    row = store.get_task(task_id)
    assert row is not None
    return row


class Boom(Exception):
    pass


class Kept(Exception):
    keep_changes = True


class NotKept(Exception):
    keep_changes = False


# Transactions.


def test_what_a_transaction_wrote_is_read_back_field_for_field(store: Store) -> None:
    """insert_project and insert_tasks store every field as given; get_project and get_task read
    them back."""
    rows = [task("p1", "1"), task("p1", "2", state=LEASED, lease_expires_ms=5_000, runner_id="r")]
    ids = seeded(store, *rows)
    assert read_project(store) == project("p1", 1)
    for task_id, row in zip(ids, rows, strict=True):
        assert read_task(store, task_id) == row


def test_a_committed_transaction_is_durable_even_unclosed(opener: Callable[[], Store]) -> None:
    """Committed writes are read by a store opened afterwards on the same data, though the first
    was never closed (as after a crash); and again after it is closed."""
    first = opener()
    (task_id,) = seeded(first, task("p1", "1"))
    with first.transaction():
        p = read_project(first)
        p.state, p.error, p.finished_ms, p.counts = P_DONE, "", 77, {DONE: 1}
        first.update_project(p)
        t = read_task(first, task_id)
        t.state, t.stop_reason = DONE, "atomic"
        first.update_task(t)
    second = opener()
    assert read_project(second) == dataclasses.replace(project("p1", 1), state=P_DONE, finished_ms=77, counts={DONE: 1})
    assert read_task(second, task_id) == t
    first.close()
    assert read_project(opener()).finished_ms == 77


def test_writes_are_invisible_to_another_store_until_the_commit(opener: Callable[[], Store]) -> None:
    """Another store on the same data reads none of a transaction's writes before its commit, all after."""
    writer, reader = opener(), opener()
    (task_id,) = seeded(writer, task("p1", "1"))
    with writer.transaction():
        writer.insert_project(project("p2", 2))
        t = read_task(writer, task_id)
        t.state = DONE
        writer.update_task(t)
        p = read_project(writer)
        p.counts = {DONE: 1}
        writer.update_project(p)
        assert reader.get_project("p2") is None
        assert read_task(reader, task_id).state == QUEUED
    assert reader.get_project("p2") is not None
    assert read_task(reader, task_id).state == DONE
    assert read_project(reader).counts == {DONE: 1}


def test_inside_a_transaction_every_read_sees_its_writes(store: Store) -> None:
    """Read your writes: tasks inserted or changed earlier in the transaction are what every task
    query and get_project answer, before any commit."""
    with store.transaction():
        store.insert_project(project("p1", 1))
        assert store.next_project_seq() == 2
        a, b = store.insert_tasks([task("p1", "1"), task("p1", "2")])
        (c,) = store.insert_tasks([task("p1", "1.1", parent_id=a)])
        assert store.ready_task_ids(0, 10) == [a, b, c]
        leased = read_task(store, a)
        leased.state, leased.lease_token, leased.lease_expires_ms, leased.runner_id = LEASED, "t", 500, "r"
        store.update_task(leased)
        assert read_task(store, a) == leased
        assert store.ready_task_ids(0, 10) == [b, c], "a task leased a moment ago is no longer ready"
        assert store.leased_task_ids() == [a] and store.leased_task_ids(runner_id="r") == [a]
        assert store.due_lease_ids(500) == [a] and store.next_lease_expiry_ms() == 500
        assert sorted(store.open_task_ids("p1")) == [a, b, c]
        assert [t.path for t in store.project_tasks("p1")] == ["1", "2", "1.1"]
        assert [t.id for t in store.project_tasks_after("p1", a, 10)] == [b, c]
        assert store.children_paths("p1", a) == {"1": "1.1"}
        assert store.children_titles("p1", None, 10) == [(a, "Task 1"), (b, "Task 2")]
        waiting = read_task(store, b)
        waiting.not_before_ms = 900
        store.update_task(waiting)
        assert store.next_backoff_ms(0) == 900
        p = read_project(store)
        p.counts = {QUEUED: 2, LEASED: 1}
        store.update_project(p)
        assert read_project(store).counts == {QUEUED: 2, LEASED: 1}


def test_an_exception_rolls_every_write_back_and_is_re_raised(store: Store) -> None:
    """Inserts, task updates and project updates of a transaction that raises are all undone; the
    exception comes out as raised."""
    (task_id,) = seeded(store, task("p1", "1"))
    error = Boom("abort")
    with pytest.raises(Boom) as raised, store.transaction():
        store.insert_project(project("p2", 2))
        store.insert_tasks([task("p1", "2")])
        t = read_task(store, task_id)
        t.state = DONE
        store.update_task(t)
        p = read_project(store)
        p.state, p.counts = P_DONE, {DONE: 1}
        store.update_project(p)
        raise error
    assert raised.value is error
    assert store.get_project("p2") is None
    assert [t.path for t in store.project_tasks("p1")] == ["1"]
    assert read_task(store, task_id).state == QUEUED
    assert read_project(store) == project("p1", 1)


def test_a_cancellation_rolls_back_too(store: Store) -> None:
    """A BaseException (the cancellation of the task that holds the transaction) rolls back like any other."""
    seeded(store)
    with pytest.raises(asyncio.CancelledError), store.transaction():
        store.insert_tasks([task("p1", "1")])
        raise asyncio.CancelledError
    assert store.project_tasks("p1") == []


@pytest.mark.parametrize("error", [Kept("refused"), StaleLease("task 1: expired")], ids=lambda e: type(e).__name__)
def test_an_exception_with_keep_changes_commits_and_is_re_raised(store: Store, error: Exception) -> None:
    """A refusal with `keep_changes = True` (a counted stale lease) keeps the transaction's writes."""
    (task_id,) = seeded(store, task("p1", "1"))
    with pytest.raises(type(error)) as raised, store.transaction():
        p = read_project(store)
        p.late_results_refused += 1
        store.update_project(p)
        t = read_task(store, task_id)
        t.state = QUEUED
        t.last_error = "lease expired"
        store.update_task(t)
        store.insert_tasks([task("p1", "2")])
        raise error
    assert raised.value is error
    assert read_project(store).late_results_refused == 1
    assert read_task(store, task_id).last_error == "lease expired"
    assert len(store.project_tasks("p1")) == 2


def test_a_false_keep_changes_rolls_back(store: Store) -> None:
    """Only a true `keep_changes` commits: an exception whose attribute is False rolls back."""
    seeded(store)
    with pytest.raises(NotKept), store.transaction():
        store.insert_tasks([task("p1", "1")])
        raise NotKept
    assert store.project_tasks("p1") == []


def test_an_inner_block_commits_nothing_of_its_own(store: Store) -> None:
    """Nested blocks join the outermost: what an inner block wrote goes when the outer one raises."""
    seeded(store)
    with pytest.raises(Boom), store.transaction():
        with store.transaction():
            store.insert_tasks([task("p1", "1")])
            p = read_project(store)
            p.error = "inner"
            store.update_project(p)
        raise Boom
    assert store.project_tasks("p1") == []
    assert read_project(store).error == ""


def test_an_inner_block_ended_is_not_yet_visible_to_another_store(opener: Callable[[], Store]) -> None:
    """The end of an inner block is not a commit: another store sees its writes only after the outer one."""
    writer, reader = opener(), opener()
    seeded(writer)
    with writer.transaction():
        with writer.transaction():
            writer.insert_tasks([task("p1", "1")])
        assert reader.project_tasks("p1") == []
    assert [t.path for t in reader.project_tasks("p1")] == ["1"]


def test_an_exception_caught_between_nested_blocks_undoes_nothing(store: Store) -> None:
    """Only the outermost block's outcome decides: an inner block left by an exception that the
    outer one catches is committed with the rest."""
    seeded(store)
    with store.transaction():
        store.insert_tasks([task("p1", "1")])
        with pytest.raises(Boom), store.transaction():
            store.insert_tasks([task("p1", "2")])
            raise Boom
        store.insert_tasks([task("p1", "3")])
    assert [t.path for t in store.project_tasks("p1")] == ["1", "2", "3"]


def test_a_write_the_store_cannot_take_keeps_nothing_of_the_transaction(store: Store) -> None:
    """A broken constraint raises, at the write or at the commit, and nothing of the transaction
    is kept; the store stays usable."""
    (task_id,) = seeded(store, task("p1", "1"))
    with pytest.raises(Exception), store.transaction():  # noqa: B017 (each store raises its own error)
        store.insert_tasks([task("p1", "2")])
        store.insert_tasks([task("p1", "1")])  # the path is taken
    assert [t.path for t in store.project_tasks("p1")] == ["1"]
    with pytest.raises(Exception), store.transaction():  # noqa: B017
        t = read_task(store, task_id)
        t.state = DONE
        store.update_task(t)
        p = read_project(store)
        p.error = cast(str, None)  # a column that takes no NULL
        store.update_project(p)
    assert read_task(store, task_id).state == QUEUED
    assert read_project(store).error == ""
    with store.transaction():
        store.insert_tasks([task("p1", "2")])
    assert [t.path for t in store.project_tasks("p1")] == ["1", "2"]


def test_after_a_rollback_handed_out_projects_are_forgotten(store: Store) -> None:
    """The project object changed in a transaction that rolled back is not handed out again: the
    next read, inside a transaction or not, is the stored row."""
    seeded(store)
    with pytest.raises(Boom), store.transaction():
        changed = read_project(store)
        changed.counts[QUEUED] = 99
        store.update_project(changed)
        raise Boom
    assert read_project(store).counts == {QUEUED: 2}
    with store.transaction():
        again = read_project(store)
        assert again is not changed and again.counts == {QUEUED: 2}


# Objects.


@pytest.mark.parametrize("state", [RUNNING, P_CANCELLED])
def test_inside_a_transaction_a_project_is_one_object(store: Store, state: str) -> None:
    """get_project answers the same object for the same project until the transaction ends, so a
    change one transition makes is seen by the next before update_project (running or not)."""
    with store.transaction():
        store.insert_project(project("p1", 1, state=state))
    with store.transaction():
        first = read_project(store)
        first.counts[DONE] = 5
        second = read_project(store)
        assert second is first and second.counts[DONE] == 5
        store.update_project(second)
        assert read_project(store) is first
    assert read_project(store).counts == {QUEUED: 2, DONE: 5}


def test_a_project_changed_but_never_written_is_not_stored(store: Store) -> None:
    """Only update_project stores a change to a project, the shared object included."""
    seeded(store)
    with store.transaction():
        p = read_project(store)
        p.counts[DONE] = 5
        p.state = P_DONE
    assert read_project(store) == project("p1", 1)
    with store.transaction():
        assert read_project(store) == project("p1", 1)


def test_outside_a_transaction_reads_are_the_callers_copies(store: Store) -> None:
    """A project read outside a transaction, and any task, is a copy: changing it changes nothing
    until written back."""
    (task_id,) = seeded(store, task("p1", "1"))
    p = read_project(store)
    p.counts[QUEUED] = 0
    p.usage["calls"] = 100
    p.state = P_DONE
    assert read_project(store) == project("p1", 1)
    t = read_task(store, task_id)
    t.state = DONE
    t.acceptance_criteria.append("changed")
    assert read_task(store, task_id) == dataclasses.replace(task("p1", "1"), id=task_id)
    with store.transaction():
        inside = read_task(store, task_id)
        inside.state = DONE
        assert read_task(store, task_id).state == QUEUED
    for row in store.list_projects(10, None):
        row.counts.clear()
    assert read_project(store).counts == {QUEUED: 2}


def test_update_project_stores_every_field_that_changes_after_submission(store: Store) -> None:
    """state, error, finished_ms, counts, late_results_refused, leases_expired, usage."""
    seeded(store)
    with store.transaction():
        p = read_project(store)
        p.state, p.error, p.finished_ms = P_DONE, "dependency cycle: 1 -> 2", 9_999
        p.counts = {DONE: 3, DEAD: 1}
        p.late_results_refused, p.leases_expired = 4, 2
        p.usage = {"calls": 7, "prompt_tokens": 1_000}
        store.update_project(p)
    expected = dataclasses.replace(
        project("p1", 1), state=P_DONE, error="dependency cycle: 1 -> 2", finished_ms=9_999,
        counts={DONE: 3, DEAD: 1}, late_results_refused=4, leases_expired=2, usage={"calls": 7, "prompt_tokens": 1_000},
    )  # fmt: skip
    assert read_project(store) == expected
    (stats,) = store.project_stats()
    assert (stats.state, stats.counts, stats.late_results_refused, stats.leases_expired, stats.usage) == (
        P_DONE, {DONE: 3, DEAD: 1}, 4, 2, {"calls": 7, "prompt_tokens": 1_000},
    )  # fmt: skip


def test_update_task_stores_every_field(store: Store) -> None:
    (task_id,) = seeded(store, task("p1", "1"))
    with store.transaction():
        changed = dataclasses.replace(
            read_task(store, task_id), title="Renamed", description="New.", acceptance_criteria=["x"],
            depends_on=["9"], atomic=True, atomic_reason="one step", estimate_hours=0.25, state=LEASED,
            attempts=2, lease_token="abc", lease_expires_ms=123, runner_id="r9", not_before_ms=55,
            last_error="boom", result_digest="d1", stop_reason="atomic",
        )  # fmt: skip
        store.update_task(changed)
    assert read_task(store, task_id) == changed


# Ids.


def test_task_ids_are_positive_and_increase_in_insertion_order(store: Store) -> None:
    """Ids are set on the rows and returned in their order, unique over the store, increasing in
    the order of insertion whatever the project, the transaction or the path."""
    with store.transaction():
        store.insert_project(project("p1", 1))
        store.insert_project(project("p2", 2))
    ids: list[int] = []
    for batch in (["3", "1"], ["2"], ["5", "4", "6"]):
        for project_id in ("p2", "p1"):
            rows = [task(project_id, path) for path in batch]
            with store.transaction():
                returned = store.insert_tasks(rows)
            assert returned == [r.id for r in rows]
            ids += returned
    assert ids[0] > 0
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_a_project_id_or_seq_used_twice_is_refused(store: Store) -> None:
    seeded(store)
    for duplicate in (project("p1", 2), project("p2", 1)):
        with pytest.raises(Exception), store.transaction():  # noqa: B017 (each store raises its own error)
            store.insert_project(duplicate)
    assert [p.id for p in store.list_projects(10, None)] == ["p1"]


def test_tasks_need_their_project_and_a_path_of_their_own(store: Store) -> None:
    seeded(store, task("p1", "1"))
    for bad in (task("nope", "1"), task("p1", "1")):
        with pytest.raises(Exception), store.transaction():  # noqa: B017
            store.insert_tasks([bad])
    with store.transaction():  # the same path in another project is another task
        store.insert_project(project("p2", 2))
        store.insert_tasks([task("p2", "1")])


def test_unknown_ids_read_as_none(store: Store) -> None:
    seeded(store, task("p1", "1"))
    assert store.get_project("nope") is None
    assert store.get_task(10**9) is None


# Queries and their orders.


def test_list_projects_is_newest_first_from_before_seq(store: Store) -> None:
    for seq in random.Random(4).sample(range(1, 8), 7):
        with store.transaction():
            store.insert_project(project(f"p{seq}", seq))
    assert [p.seq for p in store.list_projects(10, None)] == [7, 6, 5, 4, 3, 2, 1]
    assert [p.seq for p in store.list_projects(3, None)] == [7, 6, 5]
    assert [p.seq for p in store.list_projects(3, 5)] == [4, 3, 2]
    assert store.list_projects(3, 1) == []
    assert store.list_projects(1, None) == [project("p7", 7)]


def test_next_project_seq_follows_the_highest(store: Store) -> None:
    assert store.next_project_seq() == 1
    for seq in (5, 2):
        with store.transaction():
            store.insert_project(project(f"p{seq}", seq))
    assert store.next_project_seq() == 6


def test_running_project_ids_and_project_stats_cover_every_project(store: Store) -> None:
    with store.transaction():
        for seq, state in enumerate((RUNNING, P_DONE, RUNNING, P_CANCELLED), start=1):
            store.insert_project(project(f"p{seq}", seq, state=state))
    assert sorted(store.running_project_ids()) == ["p1", "p3"]
    stats = sorted(store.project_stats(), key=lambda s: s.id)
    assert [(s.id, s.state, s.counts, s.usage) for s in stats] == [
        (f"p{seq}", state, {QUEUED: 2}, {"calls": 1})
        for seq, state in enumerate((RUNNING, P_DONE, RUNNING, P_CANCELLED), start=1)
    ]


def test_project_tasks_are_by_depth_then_parent_then_position(store: Store) -> None:
    seeded(store)
    with store.transaction():
        one, two = store.insert_tasks([task("p1", "1"), task("p1", "2")])
        # Inserted against the stated order: the second parent's children first, positions reversed.
        store.insert_tasks([task("p1", "2.2", parent_id=two), task("p1", "2.1", parent_id=two)])
        store.insert_tasks([task("p1", "1.2", parent_id=one), task("p1", "1.1", parent_id=one)])
        store.insert_tasks([task("p1", "3")])
    assert [t.path for t in store.project_tasks("p1")] == ["1", "2", "3", "1.1", "1.2", "2.1", "2.2"]
    assert store.project_tasks("nope") == []


def test_project_tasks_after_is_oldest_first_and_of_the_project(store: Store) -> None:
    seeded(store)
    with store.transaction():
        store.insert_project(project("p2", 2))
    mine: list[int] = []
    for path in ("1", "2", "3", "4"):
        with store.transaction():
            mine += store.insert_tasks([task("p1", path)])
            store.insert_tasks([task("p2", path)])
    assert [t.id for t in store.project_tasks_after("p1", 0, 10)] == mine
    assert [t.id for t in store.project_tasks_after("p1", mine[0], 2)] == mine[1:3]
    assert store.project_tasks_after("p1", mine[-1], 10) == []


def test_children_paths_and_titles_are_the_parents_by_position(store: Store) -> None:
    seeded(store)
    with store.transaction():
        store.insert_project(project("p2", 2))
        store.insert_tasks([task("p2", "1")])
        b, a = store.insert_tasks([task("p1", "2"), task("p1", "1")])
        c3, c1, c2 = store.insert_tasks(
            [task("p1", "1.3", parent_id=a), task("p1", "1.1", parent_id=a), task("p1", "1.2", parent_id=a)]
        )
    assert store.children_paths("p1", None) == {"1": "1", "2": "2"}
    assert store.children_paths("p1", a) == {"1": "1.1", "2": "1.2", "3": "1.3"}
    assert store.children_paths("p1", b) == {}
    assert store.children_titles("p1", None, 10) == [(a, "Task 1"), (b, "Task 2")]
    assert store.children_titles("p1", a, 10) == [(c1, "Task 1.1"), (c2, "Task 1.2"), (c3, "Task 1.3")]
    assert store.children_titles("p1", a, 2) == [(c1, "Task 1.1"), (c2, "Task 1.2")]


def test_ready_task_ids_are_queued_tasks_past_their_backoff_first_in_first_out(store: Store) -> None:
    seeded(store)
    with store.transaction():
        store.insert_project(project("p2", 2))
        ids = [
            store.insert_tasks([row])[0]
            for row in (
                task("p2", "1"),
                task("p1", "1", not_before_ms=100),
                task("p1", "2", not_before_ms=101),
                task("p1", "3", state=LEASED, lease_expires_ms=5, runner_id="r"),
                task("p1", "4", state=DONE),
                task("p2", "2"),
            )
        ]
    assert store.ready_task_ids(100, 10) == [ids[0], ids[1], ids[5]]
    assert store.ready_task_ids(101, 2) == [ids[0], ids[1]]
    assert store.ready_task_ids(200, 10) == [ids[0], ids[1], ids[2], ids[5]]


def test_next_backoff_ms_is_the_earliest_wait_still_to_come(store: Store) -> None:
    seeded(
        store,
        task("p1", "1", not_before_ms=300),
        task("p1", "2", not_before_ms=200),
        task("p1", "3", not_before_ms=50),
        task("p1", "4", state=LEASED, lease_expires_ms=9, runner_id="r", not_before_ms=150),
    )
    assert store.next_backoff_ms(100) == 200
    assert store.next_backoff_ms(200) == 300
    assert store.next_backoff_ms(300) is None


def test_due_leases_are_earliest_expiry_first_and_next_expiry_counts_past_ones(store: Store) -> None:
    ids = seeded(
        store,
        task("p1", "1", state=LEASED, lease_expires_ms=300, runner_id="r"),
        task("p1", "2", state=LEASED, lease_expires_ms=200, runner_id="r"),
        task("p1", "3", state=LEASED, lease_expires_ms=100, runner_id="r"),
        task("p1", "4", state=QUEUED, lease_expires_ms=50),
    )
    assert store.due_lease_ids(250) == [ids[2], ids[1]]
    assert store.due_lease_ids(300) == [ids[2], ids[1], ids[0]]
    assert store.due_lease_ids(99) == []
    assert store.next_lease_expiry_ms() == 100
    with store.transaction():
        for task_id in ids[:3]:
            t = read_task(store, task_id)
            t.state, t.lease_expires_ms = DONE, None
            store.update_task(t)
    assert store.next_lease_expiry_ms() is None


def test_leased_and_open_task_ids_filter_by_runner_and_project(store: Store) -> None:
    a1, a2, q1, d1 = seeded(
        store,
        task("p1", "1", state=LEASED, lease_expires_ms=9, runner_id="a"),
        task("p1", "2", state=LEASED, lease_expires_ms=9, runner_id="b"),
        task("p1", "3"),
        task("p1", "4", state=CANCELLED),
    )
    (b1,) = seeded(store, task("p2", "1", state=LEASED, lease_expires_ms=9, runner_id="a"), project_id="p2", seq=2)
    assert sorted(store.leased_task_ids()) == sorted([a1, a2, b1])
    assert sorted(store.leased_task_ids(runner_id="a")) == sorted([a1, b1])
    assert store.leased_task_ids(project_id="p1", runner_id="a") == [a1]
    assert sorted(store.leased_task_ids(project_id="p1")) == sorted([a1, a2])
    assert store.leased_task_ids(runner_id="nobody") == []
    assert sorted(store.open_task_ids("p1")) == sorted([a1, a2, q1]) and d1 not in store.open_task_ids("p1")
    assert store.open_task_ids("p2") == [b1]


# The suite covers the whole protocol.

COVERED = {
    "transaction", "insert_project", "update_project", "get_project", "list_projects", "next_project_seq",
    "insert_tasks", "update_task", "get_task", "project_tasks", "children_titles", "project_tasks_after",
    "children_paths", "ready_task_ids", "next_backoff_ms", "due_lease_ids", "next_lease_expiry_ms",
    "leased_task_ids", "open_task_ids", "running_project_ids", "project_stats", "close",
}  # fmt: skip


def test_every_method_of_the_protocol_is_covered_here() -> None:
    """A method added to Store needs its guarantees stated and tested here before this passes."""
    assert {name for name in vars(Store) if not name.startswith("_")} == COVERED
