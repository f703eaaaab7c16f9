"""The leader's durable store: every project and task row, behind one interface.

`Store` is the interface the rest of the leader uses; `SqliteStore` is the embedded default
(SQLite in WAL mode). Every change runs inside `transaction()`, and the caller acknowledges to a
runner or client only after the transaction has committed, so a leader killed at any instant
restarts with exactly what it had acknowledged.

SQLite is called on the event loop's thread on purpose: the leader is its only writer, each
transaction is a handful of indexed statements (tens of microseconds), and a hop to a worker
thread would cost more than the work while putting shared state on two threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from paradecom.limits import INT32_MAX, INT64_MAX

# Task states as stored; the proto's TaskStatus values map one to one (see lifecycle.STATUS).
QUEUED = "queued"
LEASED = "leased"
DONE = "done"
DEAD = "dead"
CANCELLED = "cancelled"

# Project states as stored.
RUNNING = "running"
P_DONE = "done"
P_CANCELLED = "cancelled"
P_FAILED = "failed"


@dataclass
class TaskRow:
    """One task as stored. `id` is the leader's opaque id; `path` is the tree id ("1.2.3")."""

    id: int
    project_id: str
    parent_id: int | None
    path: str
    position: int
    depth: int
    key: str
    title: str
    description: str
    acceptance_criteria: list[str]
    depends_on: list[str]  # sibling keys, resolved to paths when the tree is read
    atomic: bool
    atomic_reason: str
    estimate_hours: float
    state: str
    attempts: int = 0
    lease_token: str | None = None
    lease_expires_ms: int | None = None
    runner_id: str | None = None
    not_before_ms: int = 0
    last_error: str = ""
    result_digest: str | None = None
    stop_reason: str = ""  # why a leaf has no children ("atomic", "max depth reached", ...)


@dataclass
class ProjectRow:
    """One project as stored, with its task counters kept in step by every transition."""

    id: str
    seq: int
    name: str
    definition: bytes  # serialized paradecom.v1.ProjectDefinition, max_depth resolved
    max_depth: int
    state: str
    error: str
    created_ms: int
    finished_ms: int
    counts: dict[str, int] = field(default_factory=dict)  # state -> number of tasks
    late_results_refused: int = 0
    leases_expired: int = 0
    usage: dict[str, int] = field(default_factory=dict)  # LlmUsage field -> total
    max_tasks: int = 0  # 0: the leader's limit
    max_tokens: int = 0  # 0: no token budget


@dataclass(frozen=True)
class ProjectStats:
    """A project's counters without its definition: what a metrics scrape reads."""

    id: str
    state: str
    counts: dict[str, int]
    late_results_refused: int
    leases_expired: int
    usage: dict[str, int]


class Store(Protocol):
    """What the leader needs from a store: the whole contract, which every implementation keeps and
    `tests/test_store_contract.py` checks (add a new store to its list).

    **Callers.** One leader is the only writer, and it calls the store from one thread, one call at
    a time (the event loop's); no method is called concurrently with another.

    **Transactions.** Every write (`insert_*`, `update_*`) is made inside `transaction()`.
    - All or nothing: the writes of a transaction are committed together when its block ends
      normally, and only then are they durable (a store opened afterwards on the same data reads
      them, even if this one was never closed) or visible to any other reader.
    - Read your writes: inside a transaction every read and query sees the transaction's own
      writes (a task leased a moment ago is no longer in `ready_task_ids`), with one exception:
      `list_projects`, `running_project_ids` and `project_stats` may show the changes of
      `update_project` only once committed (the leader calls them outside transactions).
    - An exception leaving the block (any, a cancellation included) rolls every write of the
      transaction back and is re-raised, the same object; unless it has a true `keep_changes`
      attribute (a refusal whose bookkeeping must stay, such as a counted stale lease:
      `leader/errors.py` `StaleLease`): then the writes are committed, and it is re-raised.
    - Nested blocks join the outermost one: an inner block's end commits nothing, and only the
      outermost block's outcome decides (an exception caught between the two undoes nothing).
    - A write the store cannot take (a broken constraint, a failing disk) raises, at the write or
      at the commit; either way nothing of the transaction is kept.
    - After a rollback the store reads as before the transaction, the project objects it handed
      out during it included (the next `get_project` does not return them), and stays usable.

    **Objects.** A project read inside a transaction is shared (see `get_project`); every other
    object a read returns is the caller's own copy, and changing it changes nothing in the store
    until it is written back with `update_task` / `update_project`. The caller does not change a
    project object after the transaction it was read in has ended.

    **Ids.** Project ids are the caller's and unique. Task ids are given by `insert_tasks`: positive
    integers, unique in the store and increasing in the order tasks were inserted (a parent's id is
    below its children's), never reused. A task's `path` is unique within its project.

    **Orders.** Each query states its order; where it states none, the caller assumes none.
    """

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A block whose writes commit together (see the class docstring for the rules)."""
        ...

    def insert_project(self, row: ProjectRow) -> None:
        """Store a new project, every field as given. Raises if a project with its id or its seq
        exists."""
        ...

    def update_project(self, row: ProjectRow) -> None:
        """Store the fields of a project that change after submission: state, error, finished_ms,
        counts, late_results_refused, leases_expired and usage (the caller never changes the
        others). Only this stores a change made to a project object, the shared one included, so
        the caller calls it after every change: a project changed in a transaction but never
        written with it is not stored."""
        ...

    def get_project(self, project_id: str) -> ProjectRow | None:
        """The project, or None if there is none with this id. Inside a transaction: the same
        object for the same project at every call until the transaction ends, so a change one
        transition makes to it is seen by the next, even before `update_project`. Outside one: a
        copy of the stored row."""
        ...

    def list_projects(self, limit: int, before_seq: int | None) -> list[ProjectRow]:
        """Up to `limit` projects with a seq below `before_seq` (any seq when None), highest seq
        first: newest first."""
        ...

    def next_project_seq(self) -> int:
        """One more than the highest seq of any project; 1 in an empty store."""
        ...

    def insert_tasks(self, rows: Sequence[TaskRow]) -> list[int]:
        """Store new tasks in order, every field as given but `id`: each row gets its new id (set on
        the row), and the ids are returned in the rows' order. Raises if the project does not exist
        or a path is already used in it."""
        ...

    def update_task(self, row: TaskRow) -> None:
        """Store every field of the task with `row.id` as given."""
        ...

    def get_task(self, task_id: int) -> TaskRow | None:
        """The task (a copy), or None if there is none with this id."""
        ...

    def project_tasks(self, project_id: str) -> list[TaskRow]:
        """Every task of the project, by depth, then parent id, then position."""
        ...

    def children_titles(self, project_id: str, parent_id: int | None, limit: int) -> list[tuple[int, str]]:
        """(id, title) of up to `limit` children of task `parent_id` (None: the project's
        top-level tasks), by position."""
        ...

    def project_tasks_after(self, project_id: str, after_id: int, limit: int) -> list[TaskRow]:
        """Up to `limit` of the project's tasks with an id above `after_id`, by id: oldest first,
        so a parent comes before its children."""
        ...

    def children_paths(self, project_id: str, parent_id: int | None) -> dict[str, str]:
        """Key -> path of the children of task `parent_id` (None: the project's top-level tasks)."""
        ...

    def ready_task_ids(self, now_ms: int, limit: int) -> list[int]:
        """Up to `limit` queued tasks whose backoff has ended (`not_before_ms <= now_ms`), over
        every project, by id: first queued, first leased."""
        ...

    def next_backoff_ms(self, now_ms: int) -> int | None:
        """The earliest `not_before_ms` after `now_ms` among queued tasks (when the next one waiting
        out a retry backoff becomes ready); None when no queued task waits."""
        ...

    def due_lease_ids(self, now_ms: int) -> list[int]:
        """Leased tasks whose lease has expired (`lease_expires_ms <= now_ms`), earliest expiry first."""
        ...

    def next_lease_expiry_ms(self) -> int | None:
        """The earliest `lease_expires_ms` among leased tasks, past or not; None when none is leased."""
        ...

    def leased_task_ids(self, runner_id: str | None = None, project_id: str | None = None) -> list[int]:
        """Leased tasks, of the runner and of the project when given; in no stated order."""
        ...

    def open_task_ids(self, project_id: str) -> list[int]:
        """The project's queued and leased tasks; in no stated order."""
        ...

    def running_project_ids(self) -> list[str]:
        """Projects in state running; in no stated order."""
        ...

    def project_stats(self) -> list[ProjectStats]:
        """Every project's counters (no definition), one entry per project; in no stated order."""
        ...

    def close(self) -> None:
        """Release the store's resources; what was committed stays for the next store opened on the
        same data. The store is not used afterwards."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    name TEXT NOT NULL,
    definition BLOB NOT NULL,
    max_depth INTEGER NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER NOT NULL DEFAULT 0,
    counts TEXT NOT NULL DEFAULT '{}',
    late_results_refused INTEGER NOT NULL DEFAULT 0,
    leases_expired INTEGER NOT NULL DEFAULT 0,
    usage TEXT NOT NULL DEFAULT '{}',
    max_tasks INTEGER NOT NULL DEFAULT 0,
    max_tokens INTEGER NOT NULL DEFAULT 0
);
-- The definition apart from the row the leader rewrites at every transition: SQLite writes a whole
-- row, so a definition kept in it (hundreds of KB for a project of thousands of seeds) went to the
-- WAL at every commit. Stores written before this table keep the definition in projects.definition.
CREATE TABLE IF NOT EXISTS project_definitions (
    project_id TEXT PRIMARY KEY REFERENCES projects(id),
    definition BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    parent_id INTEGER REFERENCES tasks(id),
    path TEXT NOT NULL,
    position INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    key TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    acceptance_criteria TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    atomic INTEGER NOT NULL,
    atomic_reason TEXT NOT NULL,
    estimate_hours REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT,
    lease_expires_ms INTEGER,
    runner_id TEXT,
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    result_digest TEXT,
    stop_reason TEXT NOT NULL DEFAULT '',
    UNIQUE (project_id, path)
);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS tasks_backoff ON tasks (not_before_ms) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS tasks_leases ON tasks (lease_expires_ms) WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS tasks_runner ON tasks (runner_id) WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS tasks_project ON tasks (project_id, state);
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks (parent_id, position);
CREATE INDEX IF NOT EXISTS tasks_top_level ON tasks (project_id, position) WHERE parent_id IS NULL;
-- GetTaskTree in pages: a project's tasks in the order they were created.
CREATE INDEX IF NOT EXISTS tasks_project_order ON tasks (project_id, id);
CREATE INDEX IF NOT EXISTS projects_state ON projects (state);
"""

_TASK_COLUMNS = (
    "id, project_id, parent_id, path, position, depth, key, title, description, acceptance_criteria,"
    " depends_on, atomic, atomic_reason, estimate_hours, state, attempts, lease_token, lease_expires_ms,"
    " runner_id, not_before_ms, last_error, result_digest, stop_reason"
)
_PROJECT_COLUMNS = (
    "id, seq, name, definition, max_depth, state, error, created_ms, finished_ms, counts,"
    " late_results_refused, leases_expired, usage, max_tasks, max_tokens"
)
_PROJECT_SELECT = (
    "SELECT p.id, p.seq, p.name, COALESCE(d.definition, p.definition), p.max_depth, p.state, p.error,"
    " p.created_ms, p.finished_ms, p.counts, p.late_results_refused, p.leases_expired, p.usage, p.max_tasks,"
    " p.max_tokens FROM projects p LEFT JOIN project_definitions d ON d.project_id = p.id"
)


def clamp_int(value: object, high: int) -> int:
    """A stored number as the contract can carry it: from 0 to `high`. A store written by an older
    leader may hold any value (a total past int64 in a JSON column, a float); reading it must not fail."""
    if isinstance(value, float):
        value = int(value) if math.isfinite(value) else 0
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), high)


def _counters(text: str) -> dict[str, int]:
    """A JSON object of counters (task counts, LLM usage), each clamped to int64."""
    try:
        data = json.loads(text)
    except ValueError:  # also a number too long to parse (Python's digit limit)
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): clamp_int(v, INT64_MAX) for k, v in data.items()}


def _task(row: sqlite3.Row | tuple[Any, ...]) -> TaskRow:
    r = tuple(row)
    return TaskRow(
        id=r[0], project_id=r[1], parent_id=r[2], path=r[3], position=r[4], depth=r[5], key=r[6],
        title=r[7], description=r[8], acceptance_criteria=json.loads(r[9]), depends_on=json.loads(r[10]),
        atomic=bool(r[11]), atomic_reason=r[12], estimate_hours=r[13], state=r[14],
        attempts=clamp_int(r[15], INT32_MAX),
        lease_token=r[16], lease_expires_ms=r[17], runner_id=r[18], not_before_ms=r[19], last_error=r[20],
        result_digest=r[21], stop_reason=r[22],
    )  # fmt: skip


def _task_values(t: TaskRow) -> tuple[Any, ...]:
    return (
        t.project_id, t.parent_id, t.path, t.position, t.depth, t.key, t.title, t.description,
        json.dumps(t.acceptance_criteria), json.dumps(t.depends_on), int(t.atomic), t.atomic_reason,
        t.estimate_hours, t.state, t.attempts, t.lease_token, t.lease_expires_ms, t.runner_id,
        t.not_before_ms, t.last_error, t.result_digest, t.stop_reason,
    )  # fmt: skip


def _project(row: tuple[Any, ...]) -> ProjectRow:
    r = tuple(row)
    return ProjectRow(
        id=r[0], seq=r[1], name=r[2], definition=r[3], max_depth=r[4], state=r[5], error=r[6],
        created_ms=r[7], finished_ms=r[8], counts=_counters(r[9]),
        late_results_refused=clamp_int(r[10], INT32_MAX), leases_expired=clamp_int(r[11], INT32_MAX),
        usage=_counters(r[12]), max_tasks=r[13], max_tokens=r[14],
    )  # fmt: skip


def _project_values(p: ProjectRow) -> tuple[Any, ...]:
    return (
        p.seq, p.name, p.definition, p.max_depth, p.state, p.error, p.created_ms, p.finished_ms,
        json.dumps(p.counts), p.late_results_refused, p.leases_expired, json.dumps(p.usage), p.max_tasks,
        p.max_tokens,
    )  # fmt: skip


class SqliteStore:
    """The embedded store, keeping the `Store` contract: one SQLite file in WAL mode (plus its -wal
    and -shm files), or ":memory:".

    synchronous=NORMAL in WAL mode: a committed transaction survives the leader process being
    killed at any instant (the tests SIGKILL it); only an OS crash or power loss can roll back the
    last few commits, which `PRAGMA synchronous=FULL` would prevent at one fsync per commit.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly the
        # block the caller wrote.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._depth = 0
        # The rows of running projects, kept in memory: the leader is the store's only writer, and
        # every transition reads and changes its project's counters. `update_project` inside a
        # transaction only marks the row; it is written once, just before COMMIT, whatever the
        # number of transitions in that transaction (a grant of 16 tasks, a group of results).
        self._projects: dict[str, ProjectRow] = {}
        self._dirty: dict[str, ProjectRow] = {}  # changed in this transaction, written at its end
        self._touched: set[str] = set()  # handed out in this transaction (the caller may change them)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT; ROLLBACK on an exception, unless the exception carries
        `keep_changes = True` (a refusal whose bookkeeping must stay, such as a counted stale lease).
        Nested blocks join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException as exc:
            if getattr(exc, "keep_changes", False):
                self._commit()
            else:
                self._db.execute("ROLLBACK")
                self._forget_touched()
            raise
        else:
            self._commit()
        finally:
            self._depth = 0
            self._dirty.clear()
            self._touched.clear()

    def _commit(self) -> None:
        try:
            for row in self._dirty.values():
                self._db.execute(
                    "UPDATE projects SET state = ?, error = ?, finished_ms = ?, counts = ?, late_results_refused = ?,"
                    " leases_expired = ?, usage = ? WHERE id = ?",
                    (row.state, row.error, row.finished_ms, json.dumps(row.counts), row.late_results_refused,
                     row.leases_expired, json.dumps(row.usage), row.id),
                )  # fmt: skip
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._forget_touched()
            raise
        # A row changed without `update_project` would differ from the store; reading it again
        # costs less than finding out. Finished projects leave the cache (they change no more).
        for project_id in self._touched:
            cached = self._projects.get(project_id)
            if cached is not None and (project_id not in self._dirty or cached.state != RUNNING):
                del self._projects[project_id]

    def _forget_touched(self) -> None:
        """After a rollback the cached rows handed out in the transaction may hold its changes."""
        for project_id in self._touched:
            self._projects.pop(project_id, None)

    # Projects.

    def insert_project(self, row: ProjectRow) -> None:
        self._db.execute(
            f"INSERT INTO projects ({_PROJECT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, *_project_values(row)[:2], b"", *_project_values(row)[3:]),
        )
        self._db.execute(
            "INSERT INTO project_definitions (project_id, definition) VALUES (?, ?)", (row.id, row.definition)
        )

    def update_project(self, row: ProjectRow) -> None:
        """Inside a transaction: written at its commit (only the columns that change after
        submission: state, error, finished_ms, counters, usage). Outside one: written now."""
        if self._depth:
            self._dirty[row.id] = row
            self._projects[row.id] = row
            self._touched.add(row.id)
            return
        with self.transaction():
            self.update_project(row)

    def get_project(self, project_id: str) -> ProjectRow | None:
        """The project's row. Inside a transaction, the same object for the same project until the
        commit, so changes made to it by one transition are seen by the next."""
        row = self._projects.get(project_id)
        if row is None:
            found = self._db.execute(f"{_PROJECT_SELECT} WHERE p.id = ?", (project_id,)).fetchone()
            if found is None:
                return None
            row = _project(found)
            # Running projects stay cached across transactions; any project is kept until the end
            # of the transaction that read it (the contract: one object per project in it).
            if row.state == RUNNING or self._depth:
                self._projects[project_id] = row
        if self._depth:
            self._touched.add(project_id)
            return row
        # Outside a transaction the caller gets a copy, so a change it makes cannot reach the cache.
        return dataclasses.replace(row, counts=dict(row.counts), usage=dict(row.usage))

    def list_projects(self, limit: int, before_seq: int | None) -> list[ProjectRow]:
        rows = self._db.execute(
            f"{_PROJECT_SELECT} WHERE p.seq < ? ORDER BY p.seq DESC LIMIT ?",
            (before_seq if before_seq is not None else 2**62, limit),
        ).fetchall()
        return [_project(r) for r in rows]

    def next_project_seq(self) -> int:
        (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM projects").fetchone()
        return int(seq)

    def running_project_ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM projects WHERE state = ?", (RUNNING,))]

    def project_stats(self) -> list[ProjectStats]:
        rows = self._db.execute(
            "SELECT id, state, counts, late_results_refused, leases_expired, usage FROM projects"
        ).fetchall()
        return [
            ProjectStats(
                r[0], r[1], _counters(r[2]), clamp_int(r[3], INT64_MAX), clamp_int(r[4], INT64_MAX), _counters(r[5])
            )
            for r in rows
        ]

    # Tasks.

    def insert_tasks(self, rows: Sequence[TaskRow]) -> list[int]:
        cols = _TASK_COLUMNS.split(",", 1)[1]
        ids = []
        for t in rows:
            cur = self._db.execute(f"INSERT INTO tasks ({cols}) VALUES ({', '.join('?' * 22)})", _task_values(t))
            assert cur.lastrowid is not None
            t.id = cur.lastrowid
            ids.append(cur.lastrowid)
        return ids

    def update_task(self, row: TaskRow) -> None:
        cols = [c.strip() for c in _TASK_COLUMNS.split(",")][1:]
        self._db.execute(
            f"UPDATE tasks SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
            (*_task_values(row), row.id),
        )

    def get_task(self, task_id: int) -> TaskRow | None:
        row = self._db.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return _task(row) if row else None

    def project_tasks(self, project_id: str) -> list[TaskRow]:
        rows = self._db.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE project_id = ? ORDER BY depth, parent_id, position",
            (project_id,),
        ).fetchall()
        return [_task(r) for r in rows]

    def project_tasks_after(self, project_id: str, after_id: int, limit: int) -> list[TaskRow]:
        """Up to `limit` of the project's tasks created after task `after_id`, oldest first (so a
        parent comes before its children)."""
        rows = self._db.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE project_id = ? AND id > ? ORDER BY id LIMIT ?",
            (project_id, after_id, limit),
        ).fetchall()
        return [_task(r) for r in rows]

    def children_paths(self, project_id: str, parent_id: int | None) -> dict[str, str]:
        """Key -> path of the children of `parent_id` (None: the top-level tasks)."""
        if parent_id is None:
            sql = "SELECT key, path FROM tasks WHERE project_id = ? AND parent_id IS NULL"
            return {r[0]: r[1] for r in self._db.execute(sql, (project_id,))}
        sql = "SELECT key, path FROM tasks WHERE parent_id = ?"
        return {r[0]: r[1] for r in self._db.execute(sql, (parent_id,))}

    def children_titles(self, project_id: str, parent_id: int | None, limit: int) -> list[tuple[int, str]]:
        if parent_id is None:
            sql = "SELECT id, title FROM tasks WHERE project_id = ? AND parent_id IS NULL ORDER BY position LIMIT ?"
            return [(r[0], r[1]) for r in self._db.execute(sql, (project_id, limit))]
        sql = "SELECT id, title FROM tasks WHERE parent_id = ? ORDER BY position LIMIT ?"
        return [(r[0], r[1]) for r in self._db.execute(sql, (parent_id, limit))]

    def ready_task_ids(self, now_ms: int, limit: int) -> list[int]:
        rows = self._db.execute(
            "SELECT id FROM tasks WHERE state = 'queued' AND not_before_ms <= ? ORDER BY id LIMIT ?",
            (now_ms, limit),
        )
        return [r[0] for r in rows]

    def next_backoff_ms(self, now_ms: int) -> int | None:
        """When the earliest task now waiting out a retry backoff becomes ready."""
        (value,) = self._db.execute(
            "SELECT MIN(not_before_ms) FROM tasks WHERE state = 'queued' AND not_before_ms > ?", (now_ms,)
        ).fetchone()
        return None if value is None else int(value)

    def due_lease_ids(self, now_ms: int) -> list[int]:
        rows = self._db.execute(
            "SELECT id FROM tasks WHERE state = 'leased' AND lease_expires_ms <= ? ORDER BY lease_expires_ms",
            (now_ms,),
        )
        return [r[0] for r in rows]

    def next_lease_expiry_ms(self) -> int | None:
        (value,) = self._db.execute("SELECT MIN(lease_expires_ms) FROM tasks WHERE state = 'leased'").fetchone()
        return None if value is None else int(value)

    def leased_task_ids(self, runner_id: str | None = None, project_id: str | None = None) -> list[int]:
        sql, args = "SELECT id FROM tasks WHERE state = 'leased'", []
        if runner_id is not None:
            sql, args = sql + " AND runner_id = ?", [runner_id]
        if project_id is not None:
            sql, args = sql + " AND project_id = ?", [*args, project_id]
        return [r[0] for r in self._db.execute(sql, args)]

    def open_task_ids(self, project_id: str) -> list[int]:
        rows = self._db.execute(
            "SELECT id FROM tasks WHERE project_id = ? AND state IN ('queued', 'leased')", (project_id,)
        )
        return [r[0] for r in rows]

    def close(self) -> None:
        self._db.close()
