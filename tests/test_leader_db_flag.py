"""`paradecom-leader --db`: a SQLite file path or :memory:; a URL is refused before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Proc, run_cli

LEADER = [sys.executable, "-m", "paradecom.leader.main", "--listen", "127.0.0.1:0"]


def leader_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The leader run to its end in working directory `cwd`."""
    return subprocess.run([*LEADER, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        ("postgresql://paradecom:hunter2-secret@db.example:5432/paradecom", "postgresql"),
        ("sqlite:///leader.db", "sqlite"),
        ("file:leader.db?mode=rwc", "file"),
        ("mysql+pymysql://u:hunter2-secret@h/d", "mysql+pymysql"),
    ],
)
def test_a_url_is_refused_in_one_line_and_creates_no_file(tmp_path: Path, value: str, scheme: str) -> None:
    """A URL is one line naming its scheme (never its password), exit 2, and no file appears in
    the working directory (SQLite would have created one named like the URL)."""
    result = leader_in(tmp_path, "--db", value)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("paradecom-leader: error: argument --db:"), lines
    assert f"{scheme}:..." in lines[0] and ":memory:" in lines[0]
    assert "hunter2" not in result.stderr and result.stdout == ""
    assert list(tmp_path.rglob("*")) == []


def test_an_empty_db_is_refused() -> None:
    result = run_cli([*LEADER, "--db", ""])
    assert result.returncode == 2 and "argument --db: empty" in result.stderr, result.stderr


@pytest.mark.parametrize("value", [":memory:", "leader.db", "./odd:name.db", "sub/leader.db"])
def test_memory_and_file_paths_are_served(tmp_path: Path, value: str) -> None:
    """`:memory:` and file paths (a colon in a path given as ./NAME too) serve; a file store is
    created where the path says, and none for :memory:."""
    (tmp_path / "sub").mkdir()
    leader = Proc([*LEADER, "--db", value], cwd=tmp_path)
    try:
        assert leader.address()
    finally:
        leader.stop()
    files = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    if value == ":memory:":
        assert files == []
    else:
        assert (tmp_path / value).is_file()


def test_help_says_what_db_takes() -> None:
    shown = run_cli([*LEADER, "--help"]).stdout
    assert ":memory:" in shown and "URL" in shown
