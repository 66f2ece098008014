"""Outages while a device is producing: the broker SIGKILLed and restarted, and a proxy
that cuts and stalls connections. Nothing committed is ever lost."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

from simulators.broker import MosquittoBroker
from simulators.platform import PlatformRecorder
from simulators.tcp_proxy import FaultyProxy


def start(db: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.producer", "--db", str(db), "--port", str(port),
         "--rate", "400", "--keepalive", "5", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def acknowledged(db: Path) -> set[int]:
    """Seqs the device has deleted from its outbox: the broker acknowledged them."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        high = int(conn.execute("SELECT seq FROM sqlite_sequence").fetchone()[0])
        waiting = {int(r[0]) for r in conn.execute("SELECT seq FROM events")}
    return set(range(1, high + 1)) - waiting


def high_water(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT seq FROM sqlite_sequence").fetchone()[0])


async def finish(db: Path, port: int, platform: PlatformRecorder) -> None:
    """Stop producing, drain everything, and check the platform has every event."""
    drain = start(db, port, "--drain-only")
    assert await asyncio.to_thread(drain.wait, 60) == 0
    high = high_water(db)
    await platform.expect_every_seq(high)
    assert sorted(int(e["seq"]) for e in platform.events) == list(range(1, high + 1))
    assert platform.in_order_per_class()


async def device_caught_up(db: Path, appends: int = 10, timeout_s: float = 10.0) -> None:
    """Return once the device has committed ``appends`` more events.

    Its outbox has one writer, in order: once events appended after this call are committed,
    so is the deletion for any PUBACK that had already reached the device's socket.
    """
    start_high = high_water(db)
    async with asyncio.timeout(timeout_s):
        while high_water(db) < start_high + appends:  # noqa: ASYNC110  # another process
            await asyncio.sleep(0.01)


async def received_more(platform: PlatformRecorder, than: int) -> None:
    await platform.wait_for(lambda p: len(p.events) > than + 50, 40)


async def test_broker_sigkilled_and_restarted_mid_stream(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    # What is tested is the device's promise: whatever it has not had acknowledged, it
    # sends again. A SIGKILLed broker also loses what it acknowledged but had not yet passed
    # on, and forgets sessions: that would be the broker's loss. So, mid-stream, the device's
    # traffic is black-holed (its publishes stay unacknowledged), the platform is allowed to
    # catch up with everything the device already had acknowledged, the broker is killed,
    # and the device is held back until the platform has resubscribed.
    db = tmp_path / "outbox.db"
    async with PlatformRecorder(broker.host, broker.port, "crash-site") as platform, \
            FaultyProxy(broker.port) as proxy:
        device = start(db, proxy.port)
        try:
            for _ in range(3):
                await received_more(platform, len(platform.events))
                proxy.stall()
                # A PUBACK already past the proxy is still acted on: let the device catch up,
                # or the broker could be killed holding an event the device has let go of.
                await device_caught_up(db)
                acked = acknowledged(db)
                await platform.wait_for(
                    lambda p, a=acked: a <= {int(e["seq"]) for e in p.events}, 30)
                proxy.refuse()
                subscriptions = platform.subscriptions
                broker.kill()
                proxy.cut()
                proxy.resume()
                broker.start()
                await platform.wait_for(lambda p, n=subscriptions: p.subscriptions > n, 15)
                proxy.admit()
        finally:
            device.terminate()
            await asyncio.to_thread(device.wait, 10)
        await finish(db, broker.port, platform)


async def test_cut_and_stalled_connections_lose_nothing(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    db = tmp_path / "outbox.db"
    async with PlatformRecorder(broker.host, broker.port, "crash-site") as platform, \
            FaultyProxy(broker.port) as proxy:
        device = start(db, proxy.port)
        try:
            for _ in range(4):
                await received_more(platform, len(platform.events))
                proxy.cut()
            await received_more(platform, len(platform.events))
            connections = proxy.connections
            proxy.stall()  # black hole: only the keepalive can notice
            await proxy.wait_for_connections(connections + 1, 45)  # keepalive noticed: redial
            proxy.resume()
            await received_more(platform, len(platform.events))
            assert proxy.connections >= 6
        finally:
            device.terminate()
            await asyncio.to_thread(device.wait, 10)
        await finish(db, broker.port, platform)
