"""The decomposition cache: a validated answer stored under the hash of (model, prompt, answer
format), the answer format naming the endpoint too, so decomposing the same project again makes no
LLM call, and two endpoints serving different models under one name never share answers.

One SQLite file shared by every runner process on the machine (WAL mode lets them read and write
at once). Default place: $PARADECOM_CACHE_DIR, else $XDG_CACHE_HOME/paradecom, else
~/.cache/paradecom. A broken or unwritable cache is logged and skipped, never fatal: it only
saves time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from paradecom.logs import get_logger

log = get_logger("paradecom.runner.cache")

FILE_NAME = "llm-cache.sqlite"


def default_cache_dir() -> Path:
    if os.environ.get("PARADECOM_CACHE_DIR"):
        return Path(os.environ["PARADECOM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "paradecom"


def cache_key(model: str, messages: Sequence[Mapping[str, str]], answer_format: Any) -> str:
    """sha256 of the model, the exact prompt and the answer format (schema and mode)."""
    blob = json.dumps([model, list(map(dict, messages)), answer_format], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class DecompositionCache:
    """get/put of answer texts by key."""

    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory or default_cache_dir()) / FILE_NAME
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=5)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, text TEXT NOT NULL, at REAL)")
            self._db = db
        except (OSError, sqlite3.Error) as exc:
            log.warning("decomposition cache unavailable, continuing without it", path=str(self.path), error=str(exc))

    def get(self, key: str) -> str | None:
        if self._db is None:
            return None
        try:
            row = self._db.execute("SELECT text FROM answers WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            log.warning("decomposition cache read failed", error=str(exc))
            return None
        return None if row is None else str(row[0])

    def put(self, key: str, text: str) -> None:
        if self._db is None:
            return
        try:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", (key, text, time.time()))
        except sqlite3.Error as exc:
            log.warning("decomposition cache write failed", error=str(exc))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
