"""The outbox: durable appends, seq that never goes back, deletion only on request."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from edge.errors import StorageError
from edge.outbox import SCHEMA_VERSION, EventClass, Outbox


async def test_append_is_committed_and_visible_to_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    async with Outbox(path) as outbox:
        stored = await outbox.append("access.granted", {"compartment": "A1"})
        with sqlite3.connect(path) as other:
            rows = other.execute("SELECT seq, type, class, body FROM events").fetchall()
    assert rows == [(stored.seq, "access.granted", "audit", '{"compartment":"A1"}')]


async def test_wal_mode_and_full_sync(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        db = outbox._conn()
        async with db.execute("PRAGMA journal_mode") as cur:
            assert await cur.fetchone() == ("wal",)
        async with db.execute("PRAGMA synchronous") as cur:
            assert await cur.fetchone() == (2,)  # FULL
        async with db.execute("PRAGMA user_version") as cur:
            assert await cur.fetchone() == (SCHEMA_VERSION,)


async def test_seq_increases_across_deletes_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with Outbox(path) as outbox:
        first = [await outbox.append("t", {"i": i}) for i in range(3)]
        await outbox.delete(e.seq for e in first)
        assert outbox.depth == 0
    async with Outbox(path) as reopened:
        again = await reopened.append("t", {})
    assert [e.seq for e in first] == [1, 2, 3]
    assert again.seq == 4


async def test_peek_returns_oldest_first_and_delete_removes_only_those(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        for i in range(5):
            await outbox.append("t", {"i": i}, event_class=EventClass.STATE, ts=1000.0 + i)
        batch = await outbox.peek(2)
        assert [e.fields["i"] for e in batch] == [0, 1]
        assert batch[0].to_wire() == {"seq": 1, "ts": 1000.0, "type": "t", "class": "state",
                                      "i": 0}
        await outbox.delete(e.seq for e in batch)
        assert outbox.depth == 3
        assert [e.seq for e in await outbox.peek(10)] == [3, 4, 5]


async def test_depth_is_restored_at_open(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with Outbox(path) as outbox:
        await outbox.append("t", {})
        await outbox.append("t", {})
    async with Outbox(path) as reopened:
        assert reopened.depth == 2


async def test_waiters_wake_on_append_and_on_empty(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        nonempty = asyncio.ensure_future(outbox.wait_nonempty())
        await asyncio.sleep(0)
        assert not nonempty.done()
        stored = await outbox.append("t", {})
        await asyncio.wait_for(nonempty, 1)
        empty = asyncio.ensure_future(outbox.wait_empty())
        await outbox.delete([stored.seq])
        await asyncio.wait_for(empty, 1)


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this agent"):
        await Outbox(path).open()


async def test_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot open the outbox"):
        await Outbox(blocker / "o.db").open()
