"""A long offline spell: 1M events queued with no broker, then drained; peak RSS.

Baseline, same run: the RSS of this process with everything imported, before the backlog
(the floor any Python agent pays). Target: peak <= 80 MB, i.e. the backlog lives on disk,
not in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from _report import report
from _site import drain, fill, outbox_path

from edge.outbox import Outbox
from simulators.broker import MosquittoBroker


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def run(directory: Path, port: int, count: int) -> tuple[float, float]:
    async with Outbox(outbox_path(directory), max_bytes=2**40) as outbox:
        start = time.perf_counter()
        await fill(outbox, count)
        filled = time.perf_counter() - start
        drained = await drain(outbox, port)
    return count / filled, count / drained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100k events instead of 1M")
    args = parser.parse_args()
    count = 100_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker(Path(tmp) / "broker") as broker:
        baseline = rss_mb()
        fill_rate, drain_rate = asyncio.run(run(Path(tmp), broker.port, count))
        size_mb = sum(p.stat().st_size for p in Path(tmp).glob("outbox.db*")) / 2**20
    peak = peak_rss_mb()
    print(f"{'queued offline':<28} {fill_rate:>12,.0f} events/s")
    print(f"{'drained':<28} {drain_rate:>12,.0f} events/s")
    report("backlog_peak_rss", peak, "MB", baseline, "RSS before the backlog", events=count,
           fill_events_per_s=round(fill_rate), drain_events_per_s=round(drain_rate),
           db_mb_after=round(size_mb, 1), target_mb=80)


if __name__ == "__main__":
    main()
