"""The outbox: every event, durable in SQLite before anything acts on it.

Storage layer of the agent. One aiosqlite connection in WAL mode with
``synchronous=FULL``: :meth:`Outbox.append` returns only once the event is committed and
fsynced, so an access decision is on disk before its solenoid is energised. Each event
gets the next ``seq`` (SQLite ``AUTOINCREMENT``: strictly increasing, never reused, even
after deletes and restarts). Rows leave only through :meth:`Outbox.delete`, which the
forwarder calls after the broker's PUBACK.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from edge.errors import StorageError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    class TEXT NOT NULL,
    body TEXT NOT NULL
);
"""


class EventClass(StrEnum):
    """Priority class of an event: audit and alarm matter most, telemetry least."""

    AUDIT = "audit"
    ALARM = "alarm"
    STATE = "state"
    TELEMETRY = "telemetry"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as committed: ``fields`` are its type-specific members."""

    seq: int
    ts: float
    type: str
    event_class: EventClass
    fields: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        """The event as published: ``{seq, ts, type, class, ...fields}``."""
        return {
            "seq": self.seq,
            "ts": round(self.ts, 3),
            "type": self.type,
            "class": self.event_class.value,
            **self.fields,
        }


class Outbox:
    """The durable event queue. Use ``async with Outbox(path) as outbox``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._depth = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Open (creating if needed) the database and bring its schema up to date."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{self.path}: cannot open the outbox: {exc}") from exc
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await self._migrate(db)
            async with db.execute("SELECT count(*) FROM events") as cursor:
                row = await cursor.fetchone()
        except BaseException as exc:
            await db.close()  # or its worker thread would outlive us
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"{self.path}: cannot use the outbox: {exc}") from exc
            raise
        self._depth = int(row[0]) if row else 0
        self._db = db

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"outbox schema {version} is newer than this agent ({SCHEMA_VERSION})"
            )
        if version < 1:
            await db.executescript(
                f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )

    async def close(self) -> None:
        """Close the database. Idempotent."""
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def depth(self) -> int:
        """Events waiting for the broker's acknowledgement."""
        return self._depth

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError(f"{self.path}: the outbox is closed")
        return self._db

    async def append(
        self,
        event_type: str,
        fields: Mapping[str, Any],
        *,
        event_class: EventClass = EventClass.AUDIT,
        ts: float | None = None,
    ) -> StoredEvent:
        """Commit one event and return it with its ``seq``; durable when this returns."""
        when = time.time() if ts is None else ts
        body = json.dumps(fields, separators=(",", ":"), sort_keys=True)
        try:
            cursor = await self._conn().execute(
                "INSERT INTO events (ts, type, class, body) VALUES (?, ?, ?, ?)",
                (when, event_type, event_class.value, body),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot append {event_type}: {exc}") from exc
        seq = cursor.lastrowid
        assert seq is not None
        await cursor.close()
        async with self._changed:
            self._depth += 1
            self._changed.notify_all()
        return StoredEvent(seq, when, event_type, event_class, dict(fields))

    async def peek(self, limit: int) -> list[StoredEvent]:
        """The ``limit`` oldest events, in ``seq`` order."""
        async with self._conn().execute(
            "SELECT seq, ts, type, class, body FROM events ORDER BY seq LIMIT ?", (limit,)
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            StoredEvent(int(r[0]), float(r[1]), str(r[2]), EventClass(r[3]), json.loads(r[4]))
            for r in rows
        ]

    async def delete(self, seqs: Iterable[int]) -> None:
        """Remove acknowledged events, atomically (one statement, one commit)."""
        db = self._conn()
        await db.execute(
            "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))",
            (json.dumps(list(seqs)),),
        )
        async with db.execute("SELECT count(*) FROM events") as cursor:
            row = await cursor.fetchone()
        async with self._changed:
            self._depth = int(row[0]) if row else 0
            self._changed.notify_all()

    async def wait_nonempty(self) -> None:
        """Return once at least one event is waiting."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._depth > 0)

    async def wait_empty(self) -> None:
        """Return once every event has been acknowledged and deleted."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._depth == 0)
