"""The store's project rows: kept in memory by the leader, written once per transaction, forgotten
on a rollback; and stores written before the definitions had their own table still read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from paradecom.leader.core import DecompositionLeader
from paradecom.leader.store import QUEUED, RUNNING, ProjectRow, SqliteStore
from paradecom.project import ProjectDefinition, SeedTask


def flat(k: int) -> ProjectDefinition:
    return ProjectDefinition(
        name="Flat", description="K seeds.", max_depth=1, tasks=[SeedTask(title=f"Seed {i}") for i in range(k)]
    )


def test_a_grant_of_many_tasks_writes_the_project_row_once(tmp_path: Path) -> None:
    """Sixteen tasks leased in one grant move sixteen counters, and the project row is written once,
    with the counts the sixteen moves add up to."""
    store = SqliteStore(tmp_path / "s.db")
    leader = DecompositionLeader(store)
    project_id = leader.generate_work_queue(flat(20))
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    assert len(leader.lease_tasks("r", 16)) == 16
    store._db.set_trace_callback(None)
    assert sum(s.startswith("UPDATE projects") for s in statements) == 1
    assert sum(s == "COMMIT" for s in statements) == 1
    other = SqliteStore(tmp_path / "s.db")
    row = other.get_project(project_id)
    assert row is not None and row.counts == {"queued": 4, "leased": 16}


def test_a_rollback_forgets_what_the_transaction_changed_in_memory(tmp_path: Path) -> None:
    """A row changed inside a transaction that rolls back reads as stored afterwards."""
    store = SqliteStore(tmp_path / "s.db")
    project_id = DecompositionLeader(store).generate_work_queue(flat(3))
    with pytest.raises(RuntimeError), store.transaction():
        row = store.get_project(project_id)
        assert row is not None
        row.counts[QUEUED] = 99
        store.update_project(row)
        raise RuntimeError("abort")
    after = store.get_project(project_id)
    assert after is not None and after.counts == {QUEUED: 3}


def test_a_store_written_before_the_definitions_table_still_reads(tmp_path: Path) -> None:
    """A project row written by the previous version (definition in projects.definition, no
    project_definitions row) is read with its definition."""
    path = tmp_path / "old.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO projects (id, seq, name, definition, max_depth, state, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        ("old", 1, "Old", b"\x0a\x03Old", 1, RUNNING, 0),
    )
    db.commit()
    db.close()
    row = SqliteStore(path).get_project("old")
    assert isinstance(row, ProjectRow) and row.definition == b"\x0a\x03Old" and row.name == "Old"
