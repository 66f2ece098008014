"""The publish/drain path against a second MQTT implementation: nats-server's MQTT
endpoint (3.1.1 only). ``scripts/test`` installs nats-server where it is missing."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.nats_broker import NatsMqttBroker, find_nats_server
from simulators.platform import PlatformRecorder

pytestmark = pytest.mark.second_broker


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsMqttBroker]:
    if find_nats_server() is None:
        pytest.fail("nats-server is not installed: the README's test command installs it")
    with NatsMqttBroker(tmp_path / "nats") as broker:
        yield broker


async def test_publish_and_drain_through_nats_mqtt(tmp_path: Path, nats: NatsMqttBroker) -> None:
    db = tmp_path / "outbox.db"
    base = [sys.executable, "-m", "simulators.producer", "--db", str(db), "--port",
            str(nats.port), "--protocol", "3.1.1", "--rate", "300"]
    async with PlatformRecorder(nats.host, nats.port, "crash-site") as platform:
        device = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await platform.wait_for(lambda p: len(p.events) >= 200, 30)
        finally:
            device.kill()
            await asyncio.to_thread(device.wait, 10)
        drain = await asyncio.to_thread(subprocess.run, [*base, "--drain-only"], timeout=60,
                                        check=False)
        assert drain.returncode == 0
        with contextlib.closing(sqlite3.connect(db)) as conn:
            high = int(conn.execute("SELECT seq FROM sqlite_sequence").fetchone()[0])
        await platform.wait_for(lambda p: len(p.events) >= high, 30)
    assert sorted(int(e["seq"]) for e in platform.events) == list(range(1, high + 1))
    assert platform.in_order_per_class()
