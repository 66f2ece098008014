"""The outbox's file: schema and migrations, integrity check and recovery, the seq lease.

Storage layer, synchronous helpers run before (or beside) the aiosqlite connection.

The seq lease: ``seq`` must never go back, even if the database file is lost. Before
using numbers beyond a reservation, the outbox writes (and fsyncs) ``<db>.seq`` holding
a new upper bound :data:`SEQ_LEASE` ahead. A fresh database after a recovery starts at
the recorded bound, so a seq is never issued twice, at the cost of a visible jump.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge.errors import StorageError

T = TypeVar("T")

SCHEMA_VERSION = 3
SEQ_LEASE = 100_000

# Version 3 (this one): v2 plus the time quality of each event's ts.
# Version 2: explicit seq (AUTOINCREMENT keeps the high-water mark), integer priority
# class, size in bytes, the audit hash; meta for the chain anchor.
_SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    tq TEXT NOT NULL DEFAULT 'untrusted',
    class INTEGER NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    hash TEXT
);
CREATE INDEX events_by_class ON events (class, seq);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Version 1 (the first release) had: events(seq AUTOINCREMENT, ts, type, class TEXT, body).
_V1_TO_V2 = """
ALTER TABLE events RENAME TO events_v1;
{schema}
INSERT INTO events (seq, ts, class, type, body, size, hash)
    SELECT seq, ts,
           CASE class WHEN 'audit' THEN 0 WHEN 'alarm' THEN 1 WHEN 'state' THEN 2 ELSE 3 END,
           type, body, length(body) + length(type) + 48, NULL
    FROM events_v1 ORDER BY seq;
DROP TABLE events_v1;
"""


class CorruptDatabase(Exception):
    """The file failed its integrity check or is not a database."""


def check_integrity(path: Path) -> None:
    """Raise :class:`CorruptDatabase` unless ``path`` is absent or passes ``quick_check``."""
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise CorruptDatabase(str(exc)) from exc
    if rows != [("ok",)]:
        raise CorruptDatabase("; ".join(str(r[0]) for r in rows[:5]))


def move_aside(path: Path) -> Path:
    """Rename the database and its WAL/SHM files out of the way; return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{target}{suffix}"))
    return target


def migrate(db: sqlite3.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; return the version found."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise ValueError(f"outbox schema {found} is newer than this agent ({SCHEMA_VERSION})")
    if found == SCHEMA_VERSION:
        return found
    if found == 0:
        script = _SCHEMA
    elif found == 1:
        script = _V1_TO_V2.format(schema=_SCHEMA)
    else:  # 2 -> 3: events recorded before time quality existed are 'untrusted'
        script = "ALTER TABLE events ADD COLUMN tq TEXT NOT NULL DEFAULT 'untrusted';"
    db.executescript(f"BEGIN IMMEDIATE; {script} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    return found


def create_or_migrate(path: Path) -> None:
    """Create ``path`` (and its directory) with the schema, in WAL mode, or :func:`migrate` it.

    Raises :class:`StorageError` if the file cannot be used or its schema is too new."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"{path}: cannot open the outbox: {exc}") from exc
    try:
        with sqlite3.connect(path, isolation_level=None) as db:
            db.execute("PRAGMA journal_mode=WAL")
            migrate(db)
        db.close()
    except ValueError as exc:
        raise StorageError(f"{path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: cannot open the outbox: {exc}") from exc


@dataclass
class SeqLease:
    """The persisted upper bound of issued seq numbers (``<db>.seq``)."""

    path: Path
    reserved: int = 0

    @classmethod
    def load(cls, db_path: Path) -> SeqLease:
        path = Path(f"{db_path}.seq")
        try:
            reserved = int(path.read_text(encoding="ascii").strip() or 0)
        except (OSError, ValueError):
            reserved = 0
        return cls(path, reserved)

    def extend(self, needed_up_to: int) -> None:
        """Make sure every seq up to ``needed_up_to`` is covered; fsync before returning."""
        if needed_up_to <= self.reserved:
            return
        reserved = needed_up_to + SEQ_LEASE
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(f"{reserved}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.reserved = reserved


@dataclass(slots=True)
class Unreported:
    """Events of one class dropped and not yet reported: how many, and the span of their
    seqs (``first``..``last``; 0 when unknown, as in a file from before spans were kept).

    Kept in ``meta`` in the transaction that drops them, so a crash cannot lose the report.
    """

    count: int = 0
    first: int = 0
    last: int = 0

    def add(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        low, high = min(seqs), max(seqs)
        if self.count == 0:
            self.first, self.last = low, high
        elif self.first:  # (an unknown span, from an older file, stays unknown)
            self.first, self.last = min(self.first, low), max(self.last, high)
        self.count += len(seqs)

    def plus(self, seqs: Sequence[int]) -> Unreported:
        more = Unreported(self.count, self.first, self.last)
        more.add(seqs)
        return more

    def to_meta(self) -> str:
        return json.dumps([self.count, self.first, self.last])

    @classmethod
    def from_meta(cls, text: str) -> Unreported:
        try:
            value = json.loads(text)
        except ValueError:
            return cls()
        if type(value) is int:  # before spans were kept: a count alone
            return cls(value)
        if isinstance(value, list) and len(value) == 3 and all(type(v) is int for v in value):
            return cls(*value)
        return cls()


class WriterConnection:
    """The outbox's only writing connection, used from one dedicated thread.

    Each method is one unit of work for that thread: a whole batch is inserted and
    committed (one fsync) in a single call, so a commit costs one thread hop.
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        self.db.close()

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            result = work(self.db)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return result

    def insert(self, rows: list[tuple[Any, ...]], meta: Sequence[tuple[str, str]] = ()) -> None:
        """Insert ``(seq, ts, tq, class, type, body, size, hash)`` rows, and set ``meta``
        keys, in one transaction; durable on return."""
        def work(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO events (seq, ts, tq, class, type, body, size, hash) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta)
        self._transaction(work)

    def evict(self, priority: int, needed: int, unreported_key: str,
              unreported: Callable[[list[int]], str]) -> tuple[list[int], int]:
        """Delete the oldest rows of a class until ``needed`` bytes are freed.

        Returns the seqs and the bytes deleted; ``unreported(seqs)`` gives what to keep
        under ``unreported_key`` (the drops not yet reported).
        """
        def work(db: sqlite3.Connection) -> tuple[list[int], int]:
            chosen, freed = [], 0
            for seq, size in db.execute(
                    "SELECT seq, size FROM events WHERE class = ? ORDER BY seq LIMIT 10000",
                    (priority,)):
                if freed >= needed:
                    break
                chosen.append(seq)
                freed += int(size)
            if chosen:
                db.execute("DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))",
                           (json.dumps(chosen),))
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           (unreported_key, unreported(chosen)))
            return chosen, freed
        return self._transaction(work)

    def ack(self, seqs: list[int], audit_anchor_seq: int | None) -> set[int]:
        """Delete acknowledged rows; keep the chain anchor. Returns the seqs deleted
        (an event evicted meanwhile is not among them)."""
        def work(db: sqlite3.Connection) -> set[int]:
            if audit_anchor_seq is not None:
                db.execute("INSERT OR REPLACE INTO meta SELECT 'audit_anchor', hash FROM events "
                           "WHERE seq = ? AND hash IS NOT NULL", (audit_anchor_seq,))
            cursor = db.execute("DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?)) "
                                "RETURNING seq", (json.dumps(seqs),))
            return {int(row[0]) for row in cursor.fetchall()}
        return self._transaction(work)

    def clear_unreported(self) -> None:
        self._transaction(lambda db: db.execute(
            "DELETE FROM meta WHERE key LIKE 'unreported_drops_%'"))

    def checkpoint(self) -> None:
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
