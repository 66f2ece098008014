"""A device that produces a steady mix of events through the real outbox, forwarder and
link: the subject of crash and outage tests (``python -m simulators.producer``).

It appends audit, state and telemetry events at ``--rate`` per second while the forwarder
drains them to the broker. With ``--drain-only`` it appends nothing and exits 0 once the
outbox is empty. Killing it at any moment (SIGKILL) must never lose a committed event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
from pathlib import Path

from edge.config import MqttConfig
from edge.forwarder import Forwarder
from edge.link import MqttLink
from edge.outbox import EventClass, Outbox
from edge.topics import DeviceTopics

MIX = (EventClass.TELEMETRY, EventClass.TELEMETRY, EventClass.STATE, EventClass.AUDIT,
       EventClass.TELEMETRY)


async def produce(outbox: Outbox, rate: float) -> None:
    for n in itertools.count():
        cls = MIX[n % len(MIX)]
        await outbox.append(f"test.{cls.value}", {"n": n}, event_class=cls)
        await asyncio.sleep(1 / rate)


async def main(db: Path, host: str, port: int, rate: float, *, drain_only: bool,
               keepalive_s: int, protocol: str = "5") -> int:
    config = MqttConfig(host=host, port=port, allow_insecure=True, keepalive_s=keepalive_s,
                        protocol=protocol,  # type: ignore[arg-type]  # checked by argparse
                        reconnect_min_s=0.05, reconnect_max_s=0.5)
    topics = DeviceTopics("crash-site", "producer-1")
    async with Outbox(db) as outbox:
        link = MqttLink(config, topics, boot_id="producer")
        forwarder = Forwarder(outbox, link, topics)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(link.run(), name="link"),
                     tg.create_task(forwarder.run(), name="forwarder")]
            if drain_only:
                await outbox.wait_empty()
                for task in tasks:
                    task.cancel()
            else:
                tasks.append(tg.create_task(produce(outbox, rate), name="produce"))
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--keepalive", type=int, default=5)
    parser.add_argument("--drain-only", action="store_true")
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(asyncio.run(main(args.db, args.host, args.port, args.rate,
                                          drain_only=args.drain_only,
                                          keepalive_s=args.keepalive,
                                          protocol=args.protocol)))


if __name__ == "__main__":
    cli()
