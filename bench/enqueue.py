"""Durable appends per second with 64 producer tasks, each awaiting its own appends.

Baseline, same run, same disk, same pragmas (WAL, synchronous=FULL): raw sqlite3
``executemany`` of 100 rows per commit. Group commit is what lets awaited, individually
durable appends approach it. Also prints the p50/p99 latency of one awaited audit append
on an idle outbox: that append sits on the unlock path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from _report import report

from edge.outbox import EventClass, Outbox

PRODUCERS = 64
FIELDS = {"sensor": "pm25-1", "mean": 12.4, "min": 9.1, "max": 17.8, "count": 60}


async def producer_rate(path: Path, seconds: float) -> float:
    async with Outbox(path, max_bytes=2**40) as outbox:
        stop = time.perf_counter() + seconds
        counts = [0] * PRODUCERS

        async def produce(i: int) -> None:
            while time.perf_counter() < stop:
                await outbox.append("sensor.minute", FIELDS, event_class=EventClass.TELEMETRY)
                counts[i] += 1

        start = time.perf_counter()
        await asyncio.gather(*(produce(i) for i in range(PRODUCERS)))
        return sum(counts) / (time.perf_counter() - start)


async def idle_latency(path: Path, samples: int) -> tuple[float, float]:
    async with Outbox(path) as outbox:
        times = []
        for i in range(samples):
            start = time.perf_counter()
            await outbox.append("access.granted", {"compartment": "A1", "member": "ada", "n": i})
            times.append(time.perf_counter() - start)
            await asyncio.sleep(0.002)  # idle between scans, as at a real locker
    quantiles = statistics.quantiles(times, n=100)
    return quantiles[49] * 1e6, quantiles[98] * 1e6


def raw_rate(path: Path, seconds: float) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE e (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL, class INTEGER, "
               "type TEXT, body TEXT, size INTEGER, hash TEXT)")
    body = json.dumps(FIELDS)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        rows = [(time.time(), 3, "sensor.minute", body, len(body) + 61, None) for _ in range(100)]
        db.execute("BEGIN")
        db.executemany("INSERT INTO e (ts, class, type, body, size, hash) VALUES (?,?,?,?,?,?)",
                       rows)
        db.execute("COMMIT")
        count += 100
    db.close()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about 3 s instead of 15 s")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 5.0
    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_rate(Path(tmp) / "raw.db", seconds)
        value = asyncio.run(producer_rate(Path(tmp) / "outbox.db", seconds))
        p50, p99 = asyncio.run(idle_latency(Path(tmp) / "idle.db", 200 if args.quick else 1000))
    print(f"{'idle audit append p50 / p99':<28} {p50:>9,.0f} / {p99:,.0f} µs")
    report("enqueue_64_producers", value, "events/s", raw, "raw sqlite3 executemany x100",
           producers=PRODUCERS, audit_append_p50_us=round(p50), audit_append_p99_us=round(p99))


if __name__ == "__main__":
    main()
