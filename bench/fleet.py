"""Reconnect storm of a device fleet after a broker restart, against a raw all-at-once burst.

N simulated devices (simulators.fleet: the agent's own MQTT link each, with telemetry) in
one process connect to a private Mosquitto on a free loopback port. The broker is stopped
and kept down until every device's retry window has reached the cap, then started on the
same port; the figure is the storm's duration, from the broker's start to the last device
back. Baseline, in the same run and against the same broker: the same number of raw
paho-mqtt clients connecting all at once, with no backoff and no jitter (one thread, every
CONNECT sent back to back, time to the last CONNACK): what the broker takes when nothing
spreads the load. The ratio says how much longer full jitter makes the fleet's return;
the peak rates (most connections in any 1 s and any 100 ms window) say what that buys
the broker. Mosquitto must be installed: the benchmark fails without it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from _report import report
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from simulators.broker import MosquittoBroker, find_mosquitto
from simulators.fleet import Fleet, StormReport, peak_count, restart_broker

CONNECT_TIMEOUT_S = 30.0


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else -1


def ensure_descriptors(devices: int) -> None:
    """Raise the soft RLIMIT_NOFILE for N sockets here and N more in the broker it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * devices + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            sys.exit(f"{devices} devices need about {need} file descriptors; "
                     f"the hard limit is {hard} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def raw_burst(host: str, port: int, devices: int) -> list[float]:
    """Seconds from the first CONNECT to each CONNACK, for ``devices`` raw paho clients
    connecting at once from one thread (paho's blocking connect, then its socket read)."""
    connacks: list[float] = []
    clients: list[mqtt.Client] = []
    selector = selectors.DefaultSelector()
    start = time.perf_counter()

    def on_connect(*_: object) -> None:
        connacks.append(time.perf_counter() - start)

    def read_ready(timeout: float) -> None:
        for key, _events in selector.select(timeout):
            client: mqtt.Client = key.data
            client.loop_read()

    try:
        for i in range(devices):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{i:04d}",
                                 protocol=MQTTProtocolVersion.MQTTv5)
            client.on_connect = on_connect
            client.connect(host, port, keepalive=30)  # CONNECT is written here
            clients.append(client)
            sock = client.socket()
            if isinstance(sock, socket.socket):  # plain TCP: no TLS, no websocket
                selector.register(sock, selectors.EVENT_READ, client)
            read_ready(0)
        deadline = time.perf_counter() + CONNECT_TIMEOUT_S
        while len(connacks) < devices and time.perf_counter() < deadline:
            read_ready(0.5)
    finally:
        for key in list(selector.get_map().values()):
            selector.unregister(key.fileobj)
        for client in clients:
            client.disconnect()  # written at once; paho then closes the socket
        selector.close()
    if len(connacks) < devices:
        sys.exit(f"raw baseline: {len(connacks)} of {devices} clients connected")
    return connacks


async def run_fleet(broker: MosquittoBroker, args: argparse.Namespace
                    ) -> tuple[float, StormReport, StormReport, int]:
    """Cold start (s), the storm in 1 s and 100 ms windows, telemetry acknowledged."""
    start = time.monotonic()
    async with Fleet(broker.host, broker.port, args.devices, site="bench",
                     reconnect_min_s=args.reconnect_min_s, reconnect_max_s=args.reconnect_max_s,
                     telemetry_interval_s=args.telemetry_s) as fleet:
        await fleet.wait_connected(CONNECT_TIMEOUT_S)
        cold = max(d.connects[0] for d in fleet.devices) - start
        timeout = 20 * args.reconnect_max_s + 30
        back_at = await restart_broker(fleet, broker, timeout_s=timeout)
        storm = fleet.storm_report(back_at)
        fine = fleet.storm_report(back_at, window_s=0.1)
        sent = fleet.telemetry_sent()
    return cold, storm, fine, sent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="50 devices, retry windows 0.05..1 s: a few seconds")
    parser.add_argument("--devices", type=int, help="fleet size (default 200; 50 with --quick)")
    parser.add_argument("--reconnect-min-s", type=float, help="default 0.5 (0.05 with --quick)")
    parser.add_argument("--reconnect-max-s", type=float, help="default 10 (1 with --quick)")
    parser.add_argument("--telemetry-s", type=float, help="default 5 (1 with --quick); 0: none")
    args = parser.parse_args()
    quick = args.quick
    args.devices = args.devices or (50 if quick else 200)
    args.reconnect_min_s = args.reconnect_min_s or (0.05 if quick else 0.5)
    args.reconnect_max_s = args.reconnect_max_s or (1.0 if quick else 10.0)
    args.telemetry_s = (1.0 if quick else 5.0) if args.telemetry_s is None else args.telemetry_s
    return args


def main() -> None:
    args = parse_args()
    if find_mosquitto() is None:
        sys.exit("mosquitto is not installed (Debian/Ubuntu: apt install mosquitto)")
    logging.basicConfig(level=logging.ERROR)  # every refused attempt is a link warning
    ensure_descriptors(args.devices)
    descriptors = open_descriptors()
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker(Path(tmp)) as broker:
        raw = raw_burst(broker.host, broker.port, args.devices)
        cold, storm, fine, sent = asyncio.run(run_fleet(broker, args))
    leaked = open_descriptors() - descriptors
    raw_s, n = max(raw), args.devices
    raw_peak, raw_peak_fine = peak_count(raw, 1.0) / 1.0, peak_count(raw, 0.1) / 0.1
    print(f"{'devices reconnected':<28} {storm.reconnected:>8} / {n}"
          f"   (cold start, all at once: {cold:.3f} s)")
    print(f"{'retry window, full jitter':<28} {args.reconnect_min_s:>8g} .. "
          f"{args.reconnect_max_s:g} s")
    print(f"{'storm p50 / p90':<28} {storm.p50_s:>8.3f} / {storm.p90_s:.3f} s")
    print(f"{'peak reconnects, 1 s':<28} {storm.peak_rate_per_s:>8.0f} /s"
          f"   (raw burst: {raw_peak:.0f} /s)")
    print(f"{'peak reconnects, 100 ms':<28} {fine.peak_rate_per_s:>8.0f} /s"
          f"   (raw burst: {raw_peak_fine:.0f} /s)")
    print(f"{'telemetry acknowledged':<28} {sent:>8}")
    print(f"{'descriptors left open':<28} {leaked:>8}")
    # Milliseconds: the report keeps one decimal, and the raw burst lasts tens of them.
    report("fleet_reconnect_storm", storm.duration_s * 1000, "ms", raw_s * 1000,
           f"{n} raw paho at once", devices=n, connected=storm.reconnected,
           cold_start_s=round(cold, 3), storm_s=round(storm.duration_s, 3),
           storm_p50_s=round(storm.p50_s, 3), storm_p90_s=round(storm.p90_s, 3),
           baseline_s=round(raw_s, 4), peak_reconnects_per_s=storm.peak_rate_per_s,
           baseline_peak_per_s=raw_peak,
           peak_reduction_1s=round(raw_peak / storm.peak_rate_per_s, 2),
           peak_reconnects_per_s_100ms=round(fine.peak_rate_per_s, 1),
           baseline_peak_per_s_100ms=round(raw_peak_fine, 1),
           peak_reduction_100ms=round(raw_peak_fine / fine.peak_rate_per_s, 2),
           reconnect_min_s=args.reconnect_min_s, reconnect_max_s=args.reconnect_max_s,
           telemetry_acknowledged=sent, descriptors_left_open=leaked)


if __name__ == "__main__":
    main()
