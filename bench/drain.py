"""Drain rate: events/s from a backlog to Mosquitto at QoS 1, deleted after PUBACK.

Baseline, same run, same broker: raw paho-mqtt publishing one message per event at QoS 1
(network thread, all PUBACKs awaited). Batching events per message and a window of
messages in flight is what the ratio shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from _report import report
from _site import FIELDS, drain, fill, outbox_path
from paho.mqtt.enums import CallbackAPIVersion

from edge.outbox import Outbox
from simulators.broker import MosquittoBroker


def raw_paho_rate(port: int, count: int) -> float:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw")
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    acked = threading.Condition()
    done = [0]

    def on_publish(*_: object) -> None:
        with acked:
            done[0] += 1
            acked.notify_all()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    for seq in range(1, count + 1):
        body = json.dumps({"device": "raw", "events": [{"seq": seq, **FIELDS}]})
        client.publish("curbside/v1/bench-site/raw/events", body, qos=1)
        if seq - done[0] > 20_000:  # paho's message ids wrap at 65535: stay well below
            with acked:
                acked.wait_for(lambda s=seq: s - done[0] <= 10_000, 60)
    with acked:
        acked.wait_for(lambda: done[0] >= count, 600)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return count / elapsed


async def outbox_rate(directory: Path, port: int, count: int) -> float:
    async with Outbox(outbox_path(directory), max_bytes=2**40) as outbox:
        await fill(outbox, count)
        elapsed = await drain(outbox, port)
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20k events instead of 200k")
    args = parser.parse_args()
    count = 20_000 if args.quick else 200_000
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker(Path(tmp) / "broker") as broker:
        raw = raw_paho_rate(broker.port, count)
        value = asyncio.run(outbox_rate(Path(tmp), broker.port, count))
    report("drain_backlog_qos1", value, "events/s", raw, "raw paho, 1 msg/event, QoS 1",
           events=count)


if __name__ == "__main__":
    main()
