"""The outbox: group commit, seq that never goes back, classes, the byte budget, the audit
chain, and recovery from damaged files and full disks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.audit_chain import GENESIS, verify_chain, verify_outbox
from edge.clock import Reading, TimeQuality
from edge.errors import StorageError
from edge.outbox import EventClass, Outbox
from edge.outbox_store import SCHEMA_VERSION, SEQ_LEASE, Unreported


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


async def test_append_returns_after_commit_visible_to_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    async with Outbox(path) as outbox:
        stored = await outbox.append("access.granted", {"compartment": "A1"})
        seen = rows(path, "SELECT seq, type, class FROM events")
    assert seen == [(stored.seq, "access.granted", 0)]
    assert stored.fields["prev"] == GENESIS


async def test_wal_full_sync_and_schema_version(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        db = outbox._conn()
        assert list(await db.execute_fetchall("PRAGMA journal_mode")) == [("wal",)]
        assert list(await db.execute_fetchall("PRAGMA synchronous")) == [(2,)]  # FULL
        assert list(await db.execute_fetchall("PRAGMA user_version")) == [(SCHEMA_VERSION,)]


async def test_concurrent_producers_share_commits(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        stored = await asyncio.gather(*(
            outbox.append("t", {"i": i}, event_class=EventClass.TELEMETRY) for i in range(500)))
        changes = await outbox._on_writer(lambda w: w.db.total_changes)
    seqs = [e.seq for e in stored]
    assert sorted(seqs) == list(range(1, 501))
    assert seqs == sorted(seqs)  # queued order is seq order
    assert changes == 500


async def test_seq_increases_across_acks_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with Outbox(path) as outbox:
        first = [await outbox.append("t", {"i": i}, event_class=EventClass.STATE)
                 for i in range(3)]
        await outbox.ack(first)
        assert outbox.depth == 0
    async with Outbox(path) as reopened:
        again = await reopened.append("t", {}, event_class=EventClass.STATE)
    assert [e.seq for e in first] == [1, 2, 3]
    assert again.seq == 4


async def test_peek_by_class_in_seq_order_with_byte_bound(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        for i in range(5):
            await outbox.append("s", {"i": i, "pad": "x" * 100}, event_class=EventClass.STATE)
            await outbox.append("t", {"i": i}, event_class=EventClass.TELEMETRY)
        state = await outbox.peek(EventClass.STATE, limit=10)
        assert [e.fields["i"] for e in state] == [0, 1, 2, 3, 4]
        assert [e.fields["i"] for e in await outbox.peek(EventClass.STATE, after_seq=state[1].seq)
                ] == [2, 3, 4]
        assert len(await outbox.peek(EventClass.STATE, max_bytes=1)) == 1  # always one
        await outbox.ack(state[:2])
        assert outbox.class_depth(EventClass.STATE) == 3
        assert outbox.class_depth(EventClass.TELEMETRY) == 5
        stats = await outbox.stats()
    assert stats.depth["state"] == 3
    assert stats.bytes["state"] > 300
    assert stats.oldest_ts is not None


async def test_depth_per_class_is_restored_at_open(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with Outbox(path) as outbox:
        await outbox.append("a", {})
        await outbox.append("t", {}, event_class=EventClass.TELEMETRY)
    async with Outbox(path) as reopened:
        assert reopened.depth == 2
        assert reopened.class_depth(EventClass.AUDIT) == 1


async def test_migrates_a_version_1_file(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript("""
            CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
                type TEXT NOT NULL, class TEXT NOT NULL, body TEXT NOT NULL);
            INSERT INTO events (ts, type, class, body) VALUES (1.0, 'door.opened', 'state', '{}');
            INSERT INTO events (ts, type, class, body) VALUES (2.0, 'x', 'audit', '{}');
            PRAGMA user_version = 1;
        """)
    async with Outbox(path) as outbox:
        assert outbox.class_depth(EventClass.STATE) == 1
        assert [e.type for e in await outbox.peek(EventClass.STATE)] == ["door.opened"]
        new = await outbox.append("y", {})
    assert new.seq == 3


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this agent"):
        await Outbox(path).open()


async def test_budget_evicts_oldest_telemetry_and_never_audit(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with Outbox(path, max_bytes=200_000) as outbox:
        audits = [await outbox.append("access.granted", {"n": i}) for i in range(20)]
        for burst in range(10):
            await asyncio.gather(*(outbox.append("sensor.minute", {"b": burst, "pad": "x" * 400},
                                                 event_class=EventClass.TELEMETRY)
                                   for _ in range(100)))
        stats = await outbox.stats()
        assert stats.dropped["telemetry"] > 0
        assert stats.depth["audit"] == 20  # none evicted
        remaining = await outbox.peek(EventClass.TELEMETRY, limit=10_000, max_bytes=10**9)
        assert remaining[0].fields["b"] > 0  # the oldest went first
        assert sum(stats.bytes.values()) <= outbox.evictable_limit
        alarms = await outbox.peek(EventClass.ALARM)
    dropped = [e for e in alarms if e.type == "outbox.dropped"]
    assert dropped
    assert dropped[0].fields["evicted"]["telemetry"] > 0
    assert [e.seq for e in audits] == sorted(e.seq for e in audits)


async def test_the_drop_report_names_the_seqs_evicted_and_survives_a_restart(
    tmp_path: Path
) -> None:
    path = tmp_path / "o.db"
    async with Outbox(path, max_bytes=100_000) as outbox:
        outbox._budget.last_drop_report = float("inf")  # hold the report back: a crash comes first
        telemetry = [await outbox.append("sensor.minute", {"n": i, "pad": "x" * 400},
                                         event_class=EventClass.TELEMETRY) for i in range(400)]
        kept = {e.seq for e in await outbox.peek(EventClass.TELEMETRY, limit=10_000,
                                                  max_bytes=10**9)}
        assert not [e for e in await outbox.peek(EventClass.ALARM) if e.type == "outbox.dropped"]
    evicted = {e.seq for e in telemetry} - kept
    assert evicted
    async with Outbox(path, max_bytes=100_000) as reopened:
        turn = await reopened.append("door.opened", {}, event_class=EventClass.STATE)
        await asyncio.wait_for(reopened.wait_committed_after(turn.seq), 5)
        [report] = [e for e in await reopened.peek(EventClass.ALARM)
                    if e.type == "outbox.dropped"]
    assert report.fields["evicted"] == {"telemetry": len(evicted)}
    assert report.fields["seqs"] == {"telemetry": [min(evicted), max(evicted)]}


async def test_drops_not_yet_reported_at_close_are_reported_at_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    async with Outbox(path, max_bytes=100_000) as outbox:
        outbox._budget.last_drop_report = float("inf")
        for i in range(300):
            await outbox.append("sensor.minute", {"n": i, "pad": "x" * 400},
                                event_class=EventClass.TELEMETRY)
        outbox._budget.last_drop_report = 0.0  # due now: closing must not try to queue it
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert rows(path, "SELECT key FROM meta WHERE key LIKE 'unreported%'") == [
        ("unreported_drops_telemetry",)]


@given(st.lists(st.lists(st.integers(1, 10**9), max_size=20), max_size=10))
def test_unreported_drops_keep_their_count_and_span(drops: list[list[int]]) -> None:
    unreported = Unreported()
    for seqs in drops:
        unreported = Unreported.from_meta(unreported.plus(seqs).to_meta())
    every = [seq for seqs in drops for seq in seqs]
    assert unreported.count == len(every)
    assert (unreported.first, unreported.last) == ((min(every), max(every)) if every else (0, 0))


@given(st.one_of(st.text(), st.from_regex(r"\A\[-?\d+, ?-?\d+, ?-?\d+\]\Z"),
                 st.sampled_from(["true", "[1, 2]", "[1.5, 2, 3]", "{}", "null", "[true, 1, 2]"])))
def test_unreported_drops_read_back_whatever_meta_holds(text: str) -> None:
    unreported = Unreported.from_meta(text)  # never raises
    assert all(type(v) is int for v in (unreported.count, unreported.first, unreported.last))
    if unreported != Unreported():
        assert type(json.loads(text)) in (int, list)


def test_a_count_kept_before_spans_were_stays_a_count_with_an_unknown_span() -> None:
    old = Unreported.from_meta("17")
    assert (old.count, old.first, old.last) == (17, 0, 0)
    old.add([40, 41])
    assert (old.count, old.first, old.last) == (19, 0, 0)


async def test_audit_beyond_the_budget_is_kept_and_raises_storage_full(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", max_bytes=20_000) as outbox:
        for i in range(120):
            await outbox.append("access.granted", {"n": i, "pad": "y" * 200})
        assert outbox.class_depth(EventClass.AUDIT) == 120
        alarms = await outbox.peek(EventClass.ALARM)
    assert [e.type for e in alarms] == ["storage.full"]


async def test_audit_chain_verifies_and_detects_tampering(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with Outbox(path) as outbox:
        events = [await outbox.append("access.denied", {"reason": "expired", "n": i})
                  for i in range(6)]
        await outbox.append("door.opened", {}, event_class=EventClass.STATE)
        assert verify_chain([e.to_wire() for e in events]).ok
        await outbox.ack(events[:2])  # the anchor keeps what is left checkable
    assert verify_outbox(path).ok
    assert verify_outbox(path).checked == 4
    with contextlib.closing(sqlite3.connect(path)) as db:
        body = json.loads(db.execute("SELECT body FROM events WHERE seq = 4").fetchone()[0])
        body["reason"] = "granted"
        db.execute("UPDATE events SET body = ? WHERE seq = 4", (json.dumps(body),))
        db.commit()
    report = verify_outbox(path)
    assert not report.ok
    assert report.broken_at == 4


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
async def test_damaged_file_is_moved_aside_and_recovery_is_an_alarm(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "o.db"
    async with Outbox(path) as outbox:
        for i in range(300):
            await outbox.append("t", {"i": i, "pad": "z" * 300}, event_class=EventClass.STATE)
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    async with Outbox(path) as outbox:
        alarms = await outbox.peek(EventClass.ALARM)
        fresh = await outbox.append("after", {}, event_class=EventClass.STATE)
    assert [e.type for e in alarms] == ["storage.recovered"]
    moved = Path(alarms[0].fields["moved_to"])
    assert moved.exists()
    assert moved.name.startswith("o.db.corrupt-")
    assert fresh.seq > 300  # never reuses a seq, even with the file gone
    assert alarms[0].seq >= SEQ_LEASE


async def test_disk_full_holds_events_raises_fault_and_catches_up(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        await outbox.append("warmup", {})
        pages = next(iter(await outbox._conn().execute_fetchall("PRAGMA page_count")))[0]
        await outbox._on_writer(lambda w: w.db.execute(f"PRAGMA max_page_count = {pages}"))
        held = [await outbox.append("access.granted", {"n": i, "pad": "q" * 9000})
                for i in range(5)]
        assert not any(e.durable for e in held)  # the producer is not blocked
        assert (await outbox.stats()).fault is not None
        await outbox._on_writer(lambda w: w.db.execute("PRAGMA max_page_count = 1000000"))
        after = await outbox.append("after", {})
        assert after.durable
        stats = await outbox.stats()
        assert stats.fault is None
        assert stats.held_in_memory == 0
        alarms = await outbox.peek(EventClass.ALARM)
        audit = await outbox.peek(EventClass.AUDIT, limit=100)
    assert [e.type for e in alarms] == ["storage.fault"]
    assert [e.seq for e in audit] == sorted(e.seq for e in audit)
    assert {e.seq for e in held} <= {e.seq for e in audit}
    assert verify_chain([e.to_wire() for e in audit]).ok


async def test_waiters_wake_on_commit_and_on_empty(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        nonempty = asyncio.ensure_future(outbox.wait_nonempty())
        await asyncio.sleep(0)
        assert not nonempty.done()
        stored = await outbox.append("t", {})
        await asyncio.wait_for(nonempty, 1)
        empty = asyncio.ensure_future(outbox.wait_empty())
        await outbox.ack([stored])
        await asyncio.wait_for(empty, 1)


async def test_reserved_field_names_are_refused(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        with pytest.raises(ValueError, match="may not use"):
            await outbox.append("t", {"seq": 1})


async def test_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot open the outbox"):
        await Outbox(blocker / "o.db").open()


async def test_migrates_a_version_2_file_marking_old_times_untrusted(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript("""
            CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
                class INTEGER NOT NULL, type TEXT NOT NULL, body TEXT NOT NULL,
                size INTEGER NOT NULL, hash TEXT);
            CREATE INDEX events_by_class ON events (class, seq);
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO events (ts, class, type, body, size)
                VALUES (1.0, 2, 'door.opened', '{}', 59);
            PRAGMA user_version = 2;
        """)
    async with Outbox(path) as outbox:
        [old] = await outbox.peek(EventClass.STATE)
    assert old.tq == "untrusted"
    assert old.to_wire()["tq"] == "untrusted"


async def test_events_carry_the_time_and_quality_of_the_clock(tmp_path: Path) -> None:
    reading = Reading(1_800_000_000.1234, TimeQuality.SYNCHRONISED)
    async with Outbox(tmp_path / "o.db", clock=lambda: reading) as outbox:
        stored = await outbox.append("access.granted", {"n": 1})
        door = await outbox.append("door.opened", {}, event_class=EventClass.STATE,
                                   at=Reading(1_700_000_000.0, TimeQuality.UNTRUSTED))
        [peeked] = await outbox.peek(EventClass.AUDIT)
    assert (stored.ts, stored.tq) == (1_800_000_000.123, "synchronised")
    assert (door.ts, door.tq) == (1_700_000_000.0, "untrusted")
    assert json.loads(peeked.wire_json()) == peeked.to_wire()
    assert peeked.to_wire()["tq"] == "synchronised"
    assert verify_chain([peeked.to_wire()]).ok


async def test_peek_shows_only_events_the_writer_has_accounted_for(tmp_path: Path) -> None:
    # A row can be in the file a moment before the writer counts it; acking it first
    # used to leave the depth counter one too high forever (wait_empty never returned).
    async with Outbox(tmp_path / "o.db") as outbox:
        counted = await outbox.append("door.opened", {}, event_class=EventClass.STATE)
        await outbox._on_writer(lambda w: w.insert(
            [(counted.seq + 1, 1.0, "untrusted", 2, "door.closed", "{}", 59, None)]))
        assert [e.seq for e in await outbox.peek(EventClass.STATE)] == [counted.seq]
        await outbox.ack([counted])
        await asyncio.wait_for(outbox.wait_empty(), 1)
