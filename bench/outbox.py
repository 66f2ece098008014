"""Durable outbox appends per second against raw SQLite with the same durability.

The baseline is the standard library's sqlite3 doing INSERT + commit per event on a WAL
database with synchronous=FULL, in the same directory: the cost of the disk itself. The
ratio shows what aiosqlite, JSON and the outbox's bookkeeping add.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from _report import report

from edge.outbox import Outbox

FIELDS = {"compartment": "A1", "reason": "granted", "member": "ada", "badge_id": "lS0ubcgz3cSV"}


async def outbox_rate(path: Path, seconds: float) -> float:
    async with Outbox(path) as outbox:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            await outbox.append("access.granted", FIELDS)
            count += 1
        return count / (time.perf_counter() - start)


def raw_rate(path: Path, seconds: float) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE e (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL, type TEXT, "
               "class TEXT, body TEXT)")
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        db.execute("INSERT INTO e (ts, type, class, body) VALUES (?, ?, ?, ?)",
                   (time.time(), "access.granted", "audit", json.dumps(FIELDS)))
        count += 1
    db.close()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about 2 s instead of 10 s")
    parser.add_argument("--dir", type=Path, help="where to put the databases (default: a temp dir)")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 5.0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        raw = raw_rate(Path(tmp) / "raw.db", seconds)
        value = asyncio.run(outbox_rate(Path(tmp) / "outbox.db", seconds))
    report("outbox_durable_appends", value, "events/s", raw, "raw sqlite3 insert+commit",
           latency_us=round(1e6 / value, 1))


if __name__ == "__main__":
    main()
