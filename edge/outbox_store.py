"""The outbox's file: schema and migrations, integrity check and recovery, the seq lease.

Storage layer, synchronous helpers run before (or beside) the aiosqlite connection.

The seq lease: ``seq`` must never go back, even if the database file is lost. Before
using numbers beyond a reservation, the outbox writes (and fsyncs) ``<db>.seq`` holding
a new upper bound :data:`SEQ_LEASE` ahead. A fresh database after a recovery starts at
the recorded bound, so a seq is never issued twice, at the cost of a visible jump.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2
SEQ_LEASE = 100_000

# Version 2: explicit seq (AUTOINCREMENT keeps the high-water mark), integer priority
# class, size in bytes, the audit hash; meta for the chain anchor.
_SCHEMA_V2 = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
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
    script = _SCHEMA_V2 if found == 0 else _V1_TO_V2.format(schema=_SCHEMA_V2)
    db.executescript(f"BEGIN IMMEDIATE; {script} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    return found


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
