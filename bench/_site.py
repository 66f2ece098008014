"""Bench helpers: a private broker, a filled outbox, and the agent's drain path."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge.config import MqttConfig
from edge.forwarder import Forwarder
from edge.link import MqttLink
from edge.outbox import EventClass, Outbox
from edge.topics import DeviceTopics

TOPICS = DeviceTopics("bench-site", "bench-1")
FIELDS = {"sensor": "pm25-1", "mean": 12.4, "min": 9.1, "max": 17.8, "count": 60}


async def fill(outbox: Outbox, count: int, *, width: int = 4096) -> None:
    """Queue ``count`` telemetry events (every 10th an audit event), ``width`` at a time."""
    done = 0
    while done < count:
        n = min(width, count - done)
        await asyncio.gather(*(
            outbox.append("sensor.minute", FIELDS,
                          event_class=EventClass.AUDIT if (done + i) % 10 == 0
                          else EventClass.TELEMETRY)
            for i in range(n)))
        done += n


async def drain(outbox: Outbox, port: int) -> float:
    """Drain ``outbox`` to the broker on ``port``; return seconds from link-up to empty."""
    config = MqttConfig(host="127.0.0.1", port=port, allow_insecure=True)
    link = MqttLink(config, TOPICS, boot_id="bench")
    forwarder = Forwarder(outbox, link, TOPICS)
    link_task = asyncio.create_task(link.run())
    try:
        await link.wait_up()
        start = asyncio.get_running_loop().time()
        forward_task = asyncio.create_task(forwarder.run())
        await outbox.wait_empty()
        elapsed = asyncio.get_running_loop().time() - start
        forward_task.cancel()
        await asyncio.gather(forward_task, return_exceptions=True)
        return elapsed
    finally:
        link_task.cancel()
        await asyncio.gather(link_task, return_exceptions=True)


def outbox_path(directory: Path) -> Path:
    return directory / "outbox.db"
