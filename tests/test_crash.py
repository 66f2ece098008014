"""Crash durability: a producing device is SIGKILLed at random moments and restarted;
an independent subscriber proves every committed event arrives, in order per class."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from simulators.broker import MosquittoBroker
from simulators.platform import PlatformRecorder

KILLS = 30


def start(db: Path, broker: MosquittoBroker, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.producer", "--db", str(db), "--port",
         str(broker.port), "--rate", "800", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def committed_high_water(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
    return int(row[0])


async def test_sigkill_at_random_moments_loses_nothing(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    db = tmp_path / "outbox.db"
    rng = random.Random(20261121)  # reproducible kill moments
    async with PlatformRecorder(broker.host, broker.port, "crash-site") as platform:
        for _ in range(KILLS):
            device = start(db, broker)
            time.sleep(rng.uniform(0.05, 0.9))  # noqa: ASYNC251  # the kill moment, on purpose
            device.kill()
            assert device.wait(timeout=10) == -9
        drain = start(db, broker, "--drain-only")
        assert drain.wait(timeout=60) == 0  # the outbox emptied: everything got a PUBACK
        high = committed_high_water(db)
        await platform.expect_every_seq(high)

    seqs = sorted(int(e["seq"]) for e in platform.events)
    assert seqs == list(range(1, high + 1))  # every committed event, no gaps
    assert platform.in_order_per_class()
    assert high > KILLS * 10  # the kills really interrupted a busy device
