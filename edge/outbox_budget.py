"""The outbox's byte budget: what it holds per class, what it evicts, what it dropped.

Storage layer, owned by :class:`edge.outbox.Outbox`. The budget keeps the per-class
depth and byte counters of the committed events, makes room for each batch by evicting
the oldest telemetry, then the oldest state (audit and alarm events are never evicted),
and counts every drop until an ``outbox.dropped`` report carries it. Drops not yet
reported are kept in ``meta`` in the transaction that drops them (:class:`Unreported`),
so a crash cannot lose the report. The WAL counts against the budget, so the budget
also keeps it short: a checkpoint before any eviction, and every
:data:`CHECKPOINT_INTERVAL_S`.

It takes no lock of its own: the outbox calls whatever writes (:meth:`Budget.make_room`,
:meth:`Budget.checkpoint`) from its writer task, holding its write lock.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite

from edge.events import EventClass, StoredEvent
from edge.outbox_store import Unreported, WriterConnection

log = logging.getLogger("edge.outbox")  # under the outbox's name: where operators look
T = TypeVar("T")

CHECKPOINT_INTERVAL_S = 30.0
DROP_REPORT_INTERVAL_S = 60.0


class OnWriter(Protocol):
    """Runs ``fn(writer_connection, *args)`` on the outbox's writer thread."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


@dataclass(frozen=True, slots=True)
class Room:
    """What making room for a batch did to it."""

    dropped: set[EventClass]  # classes of incoming events dropped: keep their meta too
    full_alarm: dict[str, int] | None = None  # a ``storage.full`` alarm's fields, if due


def unreported_key(cls: EventClass) -> str:
    """The ``meta`` key holding the unreported drops of ``cls``."""
    return f"unreported_drops_{cls.value}"


class Budget:
    """The byte budget of one outbox file and the counters it is enforced with.

    ``max_bytes`` bounds the events and the WAL; telemetry and state are evicted once
    ``evictable_limit`` would be passed, so the rest is a reserve for audit and alarms.
    ``on_writer`` is the outbox's: the budget reaches the database only through it.
    """

    def __init__(self, path: Path, max_bytes: int, evictable_limit: int, *,
                 on_writer: OnWriter) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.evictable_limit = evictable_limit
        self.on_writer = on_writer
        self.depth = dict.fromkeys(EventClass, 0)
        self.bytes = dict.fromkeys(EventClass, 0)
        self.dropped = dict.fromkeys(EventClass, 0)
        self.unreported = {c: Unreported() for c in EventClass}
        self.last_drop_report = 0.0  # monotonic time of the last ``outbox.dropped``
        self._full_alarm = False  # raised, and no room since
        self._last_checkpoint = time.monotonic()

    async def load(self, db: aiosqlite.Connection) -> None:
        """Read the counters and the unreported drops of an outbox file at open."""
        rows = list(await db.execute_fetchall(
            "SELECT class, count(*), coalesce(sum(size), 0) FROM events GROUP BY class"))
        for cls, count, size in rows:
            self.depth[EventClass.by_priority(cls)] = int(count)
            self.bytes[EventClass.by_priority(cls)] = int(size)
        for cls in EventClass:
            stored = list(await db.execute_fetchall(
                "SELECT value FROM meta WHERE key=?", (unreported_key(cls),)))
            self.unreported[cls] = Unreported.from_meta(stored[0][0]) if stored \
                else Unreported()

    def add(self, events: Iterable[StoredEvent]) -> None:
        """Count ``events``, just committed."""
        for e in events:
            self.depth[e.event_class] += 1
            self.bytes[e.event_class] += e.size

    def remove(self, events: Iterable[StoredEvent]) -> None:
        """Stop counting ``events``, just deleted."""
        for e in events:
            self.depth[e.event_class] -= 1
            self.bytes[e.event_class] -= e.size

    def checkpoint_due(self, now: float) -> bool:
        """Whether :data:`CHECKPOINT_INTERVAL_S` has passed since the last checkpoint."""
        return now - self._last_checkpoint >= CHECKPOINT_INTERVAL_S

    async def checkpoint(self) -> None:
        """Fold the WAL into the file and truncate it; a failure is logged, not raised."""
        try:
            await self.on_writer(WriterConnection.checkpoint)
        except sqlite3.Error as exc:
            log.warning("outbox checkpoint failed: %s", exc)
        self._last_checkpoint = time.monotonic()

    def used_bytes(self) -> int:
        """Bytes of the committed events plus the WAL file's size."""
        try:
            wal = os.stat(f"{self.path}-wal").st_size
        except OSError:
            wal = 0
        return sum(self.bytes.values()) + wal

    def unreported_meta(self, classes: Iterable[EventClass]) -> list[tuple[str, str]]:
        """The ``meta`` rows keeping the unreported drops of ``classes``."""
        return [(unreported_key(c), self.unreported[c].to_meta()) for c in classes]

    async def make_room(self, batch: list[StoredEvent]) -> Room:
        """Evict oldest telemetry, then state, so the batch fits the byte budget.

        If even that is not enough, the newest incoming evictable events are removed
        from ``batch`` (in place) and counted as dropped. Raises what the writer
        connection raises (``sqlite3.Error``, ``OSError``)."""
        incoming = sum(e.size for e in batch)
        evictable_in = sum(e.size for e in batch if not e.event_class.protected)
        used = self.used_bytes()
        dropped: set[EventClass] = set()
        if used + incoming <= self.evictable_limit:
            self._full_alarm = False
            return Room(dropped)
        await self.checkpoint()  # the WAL counts: shrink it before evicting anything
        used = self.used_bytes()
        over = used + evictable_in - self.evictable_limit
        for cls in (EventClass.TELEMETRY, EventClass.STATE):
            if over <= 0:
                break
            over -= await self._evict(cls, over)
        if over > 0:
            for e in [e for e in batch if not e.event_class.protected][::-1]:
                if over <= 0:
                    break  # even the incoming evictable events do not fit: drop the newest
                batch.remove(e)
                over -= e.size
                self._count_drop(e.event_class, [e.seq])
                dropped.add(e.event_class)
        if self.used_bytes() + sum(e.size for e in batch) > self.max_bytes \
                and not self._full_alarm:
            self._full_alarm = True
            return Room(dropped, {"max_bytes": self.max_bytes,
                                  "used_bytes": self.used_bytes()})
        return Room(dropped)

    async def _evict(self, cls: EventClass, needed: int) -> int:
        def unreported(seqs: list[int]) -> str:
            return self.unreported[cls].plus(seqs).to_meta()

        seqs, freed = await self.on_writer(
            WriterConnection.evict, cls.priority, needed, unreported_key(cls), unreported)
        if seqs:
            self._count_drop(cls, seqs)
            self.depth[cls] -= len(seqs)
            self.bytes[cls] -= freed
            log.warning("outbox full: evicted %d %s event(s)", len(seqs), cls.value)
        return freed

    def _count_drop(self, cls: EventClass, seqs: list[int]) -> None:
        self.dropped[cls] += len(seqs)
        self.unreported[cls].add(seqs)

    def drop_report(self, now: float) -> dict[str, Any] | None:
        """The fields of an ``outbox.dropped`` alarm, if drops wait and one is due (at most
        one per :data:`DROP_REPORT_INTERVAL_S`); ``None`` otherwise.

        Hands the drops over: they are no longer unreported here, and the caller must
        queue the alarm and clear the ``meta`` keys
        (:meth:`WriterConnection.clear_unreported`)."""
        if not any(u.count for u in self.unreported.values()) or \
                now - self.last_drop_report < DROP_REPORT_INTERVAL_S:
            return None
        self.last_drop_report = now
        report = {c: u for c, u in self.unreported.items() if u.count}
        self.unreported = {c: Unreported() for c in EventClass}
        return {
            "evicted": {c.value: u.count for c, u in report.items()},
            "seqs": {c.value: [u.first, u.last] for c, u in report.items() if u.first},
        }
