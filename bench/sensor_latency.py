"""Sensor latency: a reading's frame on the sensor's pty -> its aggregate at the broker.

The real agent with a PMS5003 simulator on a pty (no duty cycling, one-second aggregate
windows, so each sample closes the previous window) and a private Mosquitto. For each
aggregate the platform receives, the latency runs from the sample that closed its
window (stamped when the agent decoded it, microseconds after the pty) to its arrival
at a subscriber: calibration, aggregation, the durable outbox commit, the forwarder and
QoS 1 publish. Baseline, same run: a raw paho-mqtt QoS 1 publish to the same broker and
subscriber, the floor of the network leg.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from _report import report
from paho.mqtt.enums import CallbackAPIVersion

from edge.agent import Agent
from edge.config import load_config
from simulators.air_sensors import Pms5003Sim, steady
from simulators.badge_reader import PtyBadgeReader
from simulators.broker import MosquittoBroker
from simulators.site import SITE, write_site


class Subscriber:
    """A platform-side client stamping every message's arrival."""

    def __init__(self, port: int, topic: str) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-platform")
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, m, rc, p: ready.set()
        self.client.on_message = lambda c, u, m: self._note(m.payload)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("subscriber not ready")

    def _note(self, payload: bytes) -> None:
        with self._lock:
            self.arrivals.append((time.time(), payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def measure(directory: Path, samples: int, broker: MosquittoBroker) -> list[float]:
    with PtyBadgeReader() as reader, Pms5003Sim(environment=steady(12.0), seed=1) as sensor:
        site = write_site(directory, broker_port=broker.port, reader_url=reader.path)
        with site.config_path.open("a", encoding="utf-8") as fh:
            fh.write(f'\n[[sensors]]\nid = "pm-1"\nkind = "pms5003"\nurl = "{sensor.path}"\n'
                     "interval_s = 1\nwarmup_s = 0\nduty_cycle = false\naggregate_s = 1\n")
        subscriber = Subscriber(broker.port, f"curbside/v1/{SITE}/+/telemetry")
        agent = Agent(load_config(site.config_path))
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        monitor = agent.sensors["pm-1"]
        deadline = time.monotonic() + samples * 1.5 + 15
        while len(subscriber.arrivals) < samples + 1 and time.monotonic() < deadline:  # noqa: ASYNC110  # arrivals come from paho's thread
            await asyncio.sleep(0.1)
        stop.set()
        await run
        subscriber.close()
        sample_times = sorted(r.ts for r in monitor.recent)
    latencies = []
    for arrived, payload in subscriber.arrivals:
        for event in json.loads(payload)["events"]:
            window_end = event["minute"] + event["window_s"]
            closing = [t for t in sample_times if t >= window_end]
            if closing:
                latencies.append(arrived - closing[0])
    return latencies[:samples]


def baseline(broker: MosquittoBroker, samples: int) -> list[float]:
    subscriber = Subscriber(broker.port, "bench/raw")
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    out = []
    for i in range(samples):
        before = len(subscriber.arrivals)
        start = time.time()
        publisher.publish("bench/raw", json.dumps({"i": i}).encode(), qos=1).wait_for_publish(5)
        while len(subscriber.arrivals) == before:
            time.sleep(0.0002)
        out.append(subscriber.arrivals[-1][0] - start)
    publisher.disconnect()
    publisher.loop_stop()
    subscriber.close()
    return out


def p50(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 aggregates instead of 30")
    samples = 5 if parser.parse_args().quick else 30
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker(Path(tmp) / "broker") as broker:
        latencies = asyncio.run(measure(Path(tmp) / "site", samples, broker))
        raw = baseline(broker, 200)
    if not latencies:
        raise SystemExit("no aggregate reached the broker")
    value, floor = p50(latencies) * 1000, p50(raw) * 1000
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) > 1 else value
    print(f"{'aggregate latency p99':<28} {p99:>12.1f} ms")
    report("sensor_aggregate_latency_p50", value, "ms", floor, "raw paho QoS 1 publish",
           aggregates=len(latencies), max_ms=round(max(latencies) * 1000, 1))


if __name__ == "__main__":
    main()
