"""The outbox: every event durable in SQLite before anything acts on it, and bounded.

Storage layer of the agent. Producers ``await append()``; one writer task commits
whatever has queued in a single transaction (group commit: a batch is as large as the
load makes it, so an idle outbox commits at once and a busy one commits thousands of
events per fsync). WAL mode with ``synchronous=FULL`` for every class: group commit makes
full durability cheap, so nothing is weakened for lower classes.

Events leave only through :meth:`Outbox.ack` (after the broker's PUBACK) or by eviction
when the byte budget is exhausted (:mod:`edge.outbox_budget`): oldest telemetry first, then
oldest state; audit and alarm events are never evicted. The writer stamps seqs and chains
audit events as it commits them (:mod:`edge.outbox_stamp`). A corrupt file is moved aside
at open and a ``storage.recovered`` alarm queued; a full disk never blocks a producer:
events are held in memory and ``storage.fault`` raised until writes succeed again.
See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiosqlite

from edge.audit_chain import GENESIS
from edge.clock import Reading
from edge.errors import StorageError
from edge.events import RESERVED_FIELDS, EventClass, OutboxStats, StoredEvent
from edge.outbox_budget import Budget
from edge.outbox_stamp import Pending, Stamper, unverified_clock
from edge.outbox_store import (
    CorruptDatabase,
    SeqLease,
    WriterConnection,
    check_integrity,
    create_or_migrate,
    move_aside,
)

__all__ = ["EventClass", "Outbox", "OutboxStats", "StoredEvent"]
log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH = 8192
HELD_RETRY_S = 5.0


class Outbox:
    """The durable, bounded event queue. Use ``async with Outbox(path) as outbox``."""

    def __init__(self, path: Path, *, max_bytes: int = 64 * 1024 * 1024,
                 reserve_fraction: float = 0.1,
                 clock: Callable[[], Reading] = unverified_clock) -> None:
        self.path = path
        self._stamper = Stamper(clock)
        self._budget = Budget(path, max_bytes, int(max_bytes * (1 - reserve_fraction)),
                              on_writer=self._on_writer)
        self._db: aiosqlite.Connection | None = None  # reads
        self._writer_db: WriterConnection | None = None  # writes, on their own thread
        self._executor: ThreadPoolExecutor | None = None
        self._changed = asyncio.Condition()
        self._queue: list[Pending] = []
        self._queued = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._progress = time.monotonic()  # the writer's last sign of life
        self._write_lock = asyncio.Lock()
        self._lease = SeqLease.load(path)
        self._held: list[StoredEvent] = []  # committed nowhere yet: storage has failed
        self._fault: str | None = None
        self.recovered_from: Path | None = None
        self.committed_seq = 0  # highest seq committed so far
        self._closing = False
        self._last_failure = 0.0

    @property
    def max_bytes(self) -> int:
        """The byte budget: the events and the WAL stay within it."""
        return self._budget.max_bytes

    @property
    def evictable_limit(self) -> int:
        """Telemetry and state are evicted beyond this; the rest is kept for the others."""
        return self._budget.evictable_limit

    # --- life cycle ---------------------------------------------------------------------
    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        """Check, recover if needed, migrate, connect, and start the writer."""
        loop = asyncio.get_running_loop()
        reason = await loop.run_in_executor(None, self._prepare_file)
        try:
            db = await aiosqlite.connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{self.path}: cannot open the outbox: {exc}") from exc
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await self._load(db)
        except BaseException as exc:
            await db.close()  # or its worker thread would outlive us
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"{self.path}: cannot use the outbox: {exc}") from exc
            raise
        self._db = db
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-writer")
        try:
            self._writer_db = await loop.run_in_executor(
                self._executor, WriterConnection, self.path)
        except sqlite3.Error as exc:
            await self.close()
            raise StorageError(f"{self.path}: cannot write the outbox: {exc}") from exc
        self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")
        if reason is not None:
            await self.append("storage.recovered", {
                "reason": reason, "moved_to": str(self.recovered_from),
                "resumed_at_seq": self._stamper.next_seq}, event_class=EventClass.ALARM)

    def _prepare_file(self) -> str | None:
        """Integrity check (moving a bad file aside), then migrations. Runs in a thread."""
        reason = None
        try:
            check_integrity(self.path)
        except CorruptDatabase as exc:
            reason = str(exc)
            self.recovered_from = move_aside(self.path)
            log.error("outbox %s is damaged (%s); kept as %s, starting a fresh one",
                      self.path, reason, self.recovered_from)
        create_or_migrate(self.path)
        return reason

    async def _load(self, db: aiosqlite.Connection) -> None:
        await self._budget.load(db)
        high = list(await db.execute_fetchall(
            "SELECT seq FROM sqlite_sequence WHERE name='events'"))
        self.committed_seq = int(high[0][0]) if high else 0
        self._stamper.next_seq = max(self.committed_seq + 1, self._lease.reserved + 1
                                     if self.recovered_from is not None else 1)
        head = list(await db.execute_fetchall(
            "SELECT hash FROM events WHERE class = 0 AND hash IS NOT NULL "
            "ORDER BY seq DESC LIMIT 1"))
        anchor = list(await db.execute_fetchall(
            "SELECT value FROM meta WHERE key='audit_anchor'"))
        self._stamper.audit_head = head[0][0] if head else (anchor[0][0] if anchor else GENESIS)

    async def close(self) -> None:
        """Commit what is queued, stop the writer, checkpoint and close. Idempotent."""
        if self._writer is not None:
            self._closing = True
            self._queued.set()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._db is not None:
            await self._db.close()
            self._db = None
        if self._writer_db is not None:
            try:
                await self._on_writer(WriterConnection.checkpoint)
            except sqlite3.Error as exc:
                log.warning("outbox checkpoint at close failed: %s", exc)
            await self._on_writer(WriterConnection.close)
            self._writer_db = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(writer_connection, *args)`` on the writer thread."""
        if self._writer_db is None or self._executor is None:
            raise StorageError(f"{self.path}: the outbox is closed")
        call = functools.partial(fn, self._writer_db, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError(f"{self.path}: the outbox is closed")
        return self._db

    # --- producers ----------------------------------------------------------------------
    async def append(self, event_type: str, fields: Mapping[str, Any], *,
                     event_class: EventClass = EventClass.AUDIT,
                     at: Reading | None = None) -> StoredEvent:
        """Queue one event and return once it is committed (or held, if storage failed).

        ``at`` is when it happened (default: the outbox's clock, now).
        """
        if not RESERVED_FIELDS.isdisjoint(fields):
            raise ValueError(f"event fields may not use {sorted(RESERVED_FIELDS & fields.keys())}")
        future: asyncio.Future[StoredEvent] = asyncio.get_running_loop().create_future()
        self._enqueue(event_type, dict(fields), event_class, future, at)
        # A producer cancelled while waiting cancels only its wait: the writer skips done
        # futures, and the event is committed all the same.
        return await future

    def _enqueue(self, event_type: str, fields: dict[str, Any], event_class: EventClass,
                 future: asyncio.Future[StoredEvent] | None, at: Reading | None = None) -> None:
        if self._writer is None or self._closing:
            raise StorageError(f"{self.path}: the outbox is closed")
        self._queue.append(self._stamper.pending(event_type, fields, event_class, future, at))
        self._queued.set()

    # --- the writer ---------------------------------------------------------------------
    def stuck(self, after_s: float = 15.0) -> str | None:
        """Why the writer is not doing its job, if it is not: gone, or events waiting
        while nothing was committed for ``after_s``. For the watchdog."""
        if self._writer is None or self._writer.done():
            return "the outbox writer is not running"
        if self._queue and time.monotonic() - self._progress > after_s:
            return f"{len(self._queue)} event(s) waiting, nothing committed for {after_s:g}s"
        return None

    async def _write_loop(self) -> None:
        try:
            await self._write_forever()
        except BaseException as exc:
            # Never silently: every producer still waiting learns that the outbox is gone.
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("the outbox writer failed")
            failure = StorageError(f"{self.path}: the outbox writer stopped: {exc!r}")
            for pending in self._queue:
                if pending.future is not None and not pending.future.done():
                    pending.future.set_exception(failure)
            self._queue.clear()
            raise

    async def _write_forever(self) -> None:
        while not (self._closing and not self._queue):
            if self._held:  # come back to retry them even if nothing new arrives
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HELD_RETRY_S):
                        await self._queued.wait()
            else:
                await self._queued.wait()
            self._queued.clear()
            self._progress = time.monotonic()
            while self._queue:
                batch = self._queue[:MAX_BATCH]
                stored = [self._stamper.stamp(p) for p in batch]
                await self._commit(stored)
                del self._queue[:len(batch)]  # only now: a failure above fails them all
                for pending, event in zip(batch, stored, strict=True):
                    if pending.future is not None and not pending.future.done():
                        pending.future.set_result(event)
                self._progress = time.monotonic()
                # One turn of the loop: the producers just woken queue their next events,
                # so the next commit carries all of them (group commit), not a trickle.
                await asyncio.sleep(0)
            await self._maintain()

    async def _commit(self, events: list[StoredEvent]) -> None:
        """Write ``events`` (after any held ones) in one transaction, within the budget."""
        batch = [*self._held, *events]
        if not batch:
            return
        try:
            if batch[-1].seq > self._lease.reserved:  # once per SEQ_LEASE events
                await asyncio.get_running_loop().run_in_executor(
                    None, self._lease.extend, batch[-1].seq)
            async with self._write_lock:
                room = await self._budget.make_room(batch)
                if room.full_alarm is not None:
                    batch.append(self._alarm("storage.full", room.full_alarm))
                await self._insert(batch, room.dropped)
        except (sqlite3.Error, OSError) as exc:
            self._hold(events, exc)
            return
        if self._fault is not None:
            log.warning("outbox writes again after: %s", self._fault)
            self._fault = None
        self._held = []
        async with self._changed:
            self.committed_seq = max(self.committed_seq, batch[-1].seq) if batch else \
                self.committed_seq
            self._budget.add(batch)
            self._changed.notify_all()

    async def _insert(self, batch: list[StoredEvent], dropped: set[EventClass]) -> None:
        rows = [(e.seq, e.ts, e.tq, e.event_class.priority, e.type, e.body, e.size, e.digest)
                for e in batch]
        meta = self._budget.unreported_meta(dropped)
        await self._on_writer(WriterConnection.insert, rows, meta)

    def _hold(self, events: list[StoredEvent], exc: Exception) -> None:
        """Storage failed: keep the events in memory, flag them, raise the fault alarm once."""
        first = self._fault is None
        self._fault = f"{type(exc).__name__}: {exc}"
        self._last_failure = time.monotonic()
        held = [e.held() for e in events]
        events[:] = held
        self._held.extend(held)
        log.error("outbox cannot write (%s); %d event(s) held in memory", exc, len(self._held))
        if first:
            self._held.append(self._alarm("storage.fault", {"error": self._fault}))

    def _alarm(self, event_type: str, fields: dict[str, Any]) -> StoredEvent:
        """An alarm of the outbox's own, stamped now to go with the batch at hand."""
        return self._stamper.stamp(self._stamper.pending(event_type, fields, EventClass.ALARM))

    async def _maintain(self) -> None:
        """Between batches: report drops (at most once a minute) and checkpoint the WAL."""
        now = time.monotonic()
        if not self._closing and (report := self._budget.drop_report(now)) is not None:
            self._enqueue("outbox.dropped", report, EventClass.ALARM, None)
            async with self._write_lock:
                await self._on_writer(WriterConnection.clear_unreported)
        if self._held and now - self._last_failure >= HELD_RETRY_S:
            await self._commit([])  # storage failed earlier: try the held events again
        if self._budget.checkpoint_due(now):
            async with self._write_lock:
                await self._budget.checkpoint()

    # --- the forwarder's side -----------------------------------------------------------
    async def peek(self, event_class: EventClass, *, after_seq: int = 0, limit: int = 100,
                   max_bytes: int = 256 * 1024) -> list[StoredEvent]:
        """The oldest events of one class after ``after_seq``, at most ``limit`` and
        about ``max_bytes`` (always at least one)."""
        rows = await self._conn().execute_fetchall(
            # Only what the writer has accounted for (seq <= committed_seq): a row visible
            # in the file a moment before its counters are updated must not be acked first.
            "SELECT seq, ts, tq, type, body FROM events WHERE class = ? AND seq > ? "
            "AND seq <= ? ORDER BY seq LIMIT ?",
            (event_class.priority, after_seq, self.committed_seq, limit))
        out: list[StoredEvent] = []
        total = 0
        for seq, ts, tq, event_type, body in rows:
            event = StoredEvent(int(seq), float(ts), str(event_type), event_class, body, tq=tq)
            total += event.size
            if out and total > max_bytes:
                break
            out.append(event)
        return out

    async def ack(self, events: Iterable[StoredEvent]) -> None:
        """Delete events the broker acknowledged (one statement, one commit)."""
        acked = list(events)
        if not acked:
            return
        last_audit = max((e.seq for e in acked if e.event_class is EventClass.AUDIT),
                         default=None)  # keep the chain checkable after its start is gone
        async with self._write_lock:
            deleted = await self._on_writer(
                WriterConnection.ack, [e.seq for e in acked], last_audit)
        if len(deleted) != len(acked):
            log.info("ack of %d event(s) found %d (the rest evicted meanwhile)", len(acked),
                     len(deleted))
        async with self._changed:
            self._budget.remove(e for e in acked if e.seq in deleted)
            self._changed.notify_all()

    # --- observation --------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Events committed and waiting for the broker's acknowledgement."""
        return sum(self._budget.depth.values())

    def class_depth(self, event_class: EventClass) -> int:
        return self._budget.depth[event_class]

    async def stats(self) -> OutboxStats:
        rows = list(await self._conn().execute_fetchall("SELECT min(ts) FROM events"))
        oldest = rows[0][0] if rows and rows[0][0] is not None else None
        budget = self._budget
        wal = budget.used_bytes() - sum(budget.bytes.values())
        return OutboxStats(
            depth={c.value: n for c, n in budget.depth.items()},
            bytes={c.value: n for c, n in budget.bytes.items()},
            oldest_ts=oldest, wal_bytes=wal,
            dropped={c.value: n for c, n in budget.dropped.items()},
            held_in_memory=len(self._held), fault=self._fault,
        )

    async def wait_nonempty(self) -> None:
        """Return once at least one event is waiting."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.depth > 0)

    async def wait_committed_after(self, seq: int) -> None:
        """Return once an event with a seq above ``seq`` has been committed."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.committed_seq > seq)

    async def wait_empty(self) -> None:
        """Return once every event has been acknowledged and deleted."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.depth == 0 and not self._queue)
