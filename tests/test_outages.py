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


async def received_more(platform: PlatformRecorder, than: int) -> None:
    await platform.wait_for(lambda p: len(p.events) > than + 50, 40)


async def test_broker_sigkilled_and_restarted_mid_stream(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    # The device reaches the broker through a proxy that holds it back after each restart
    # until the platform has resubscribed: a SIGKILLed broker forgets sessions, and events
    # published before the platform is back would be the broker's loss, not the device's.
    db = tmp_path / "outbox.db"
    async with PlatformRecorder(broker.host, broker.port, "crash-site") as platform, \
            FaultyProxy(broker.port) as proxy:
        device = start(db, proxy.port)
        try:
            for _ in range(3):
                await received_more(platform, len(platform.events))
                proxy.refuse()
                subscriptions = platform.subscriptions
                broker.kill()
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
