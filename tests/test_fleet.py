"""The fleet simulator against a real Mosquitto: every device up and retained online, a
broker restart that every device survives with its reconnects spread out, nothing left
open; and the storm analysis as a pure function."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from simulators.broker import MosquittoBroker, free_port
from simulators.fleet import Fleet, analyse_storm, peak_count, restart_broker

SITE = "elm-street"
_ids = itertools.count(1)


class StatusWatcher:
    """An independent paho subscriber to ``curbside/v1/<site>/+/status``: the last status
    of each device and whether it came as a retained copy."""

    def __init__(self, broker: MosquittoBroker, site: str) -> None:
        self.latest: dict[str, tuple[dict[str, Any], bool]] = {}
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"status-watcher-{next(_ids)}")
        topic = f"curbside/v1/{site}/+/status"
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        device = message.topic.split("/")[3]
        body, retained = json.loads(message.payload), bool(message.retain)
        self._loop.call_soon_threadsafe(self._record, device, body, retained)

    def _record(self, device: str, body: dict[str, Any], retained: bool) -> None:
        self.latest[device] = (body, retained)
        self._changed.set()

    async def wait_for(self, condition: Callable[[StatusWatcher], bool],
                       timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition(self):
                self._changed.clear()
                await self._changed.wait()

    def all_say(self, names: set[str], *, online: bool) -> bool:
        return set(self.latest) == names and all(
            body["online"] is online for body, _ in self.latest.values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def watching(broker: MosquittoBroker, site: str = SITE) -> Iterator[StatusWatcher]:
    watcher = StatusWatcher(broker, site)
    try:
        yield watcher
    finally:
        watcher.close()


def small_fleet(broker: MosquittoBroker, n: int = 20, **options: Any) -> Fleet:
    return Fleet(broker.host, broker.port, n, site=SITE, reconnect_min_s=0.05,
                 reconnect_max_s=1.0, **options)


def sockets_to(port: int) -> int:
    """This process's open TCP sockets whose peer is ``port`` on loopback (other tests'
    leftovers, closed by the garbage collector at any moment, do not count)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as fh:
            for row in fh.readlines()[1:]:
                fields = row.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    count += 1
    return count


# Against a real broker ---------------------------------------------------------------------

async def test_every_device_connects_and_its_retained_status_says_online(
    broker: MosquittoBroker,
) -> None:
    async with small_fleet(broker) as fleet:
        names = {d.name for d in fleet.devices}
        assert names == {f"dev-{i:04d}" for i in range(1, 21)}
        await fleet.wait_connected(timeout_s=10)
        assert fleet.connected() == 20
        assert all(len(d.connects) == 1 for d in fleet.devices)
        with watching(broker) as live:  # births, live or already retained
            await live.wait_for(lambda w: w.all_say(names, online=True))
        with watching(broker) as fresh:  # every birth is in: a newcomer gets retained copies
            await fresh.wait_for(lambda w: len(w.latest) == 20)
            assert fresh.all_say(names, online=True)
            assert all(retained for _, retained in fresh.latest.values())
            boot_ids = {body["boot_id"] for body, _ in fresh.latest.values()}
            assert len(boot_ids) == 20
    assert fleet.connected() == 0
    with watching(broker) as after:  # leaving, each device said goodbye
        await after.wait_for(lambda w: w.all_say(names, online=False))


async def test_after_a_broker_restart_every_device_reconnects_spread_over_the_window(
    broker: MosquittoBroker,
) -> None:
    async with small_fleet(broker, telemetry_interval_s=0.2) as fleet:
        await fleet.wait_connected(timeout_s=10)
        await fleet.wait_for(lambda: all(d.telemetry_sent for d in fleet.devices), 10)
        port = broker.port

        back_at = await restart_broker(fleet, broker, timeout_s=30)

        assert broker.port == port
        report = fleet.storm_report(back_at)
        assert report.complete
        assert report.reconnected == report.devices == 20
        assert 0 <= report.first_s <= report.p50_s <= report.p90_s <= report.duration_s
        assert 1 <= report.peak_rate_per_s <= 20
        firsts = [d.first_connect_since(back_at) for d in fleet.devices]
        assert None not in firsts
        assert fleet.reconnect_times(back_at)[0] == back_at + report.first_s
        # Every device retried at a random instant of its 1 s window: not all at once.
        assert report.duration_s - report.first_s > 0.25 * fleet.config.reconnect_max_s
        assert all(len(d.drops) == 1 for d in fleet.devices)
        assert all(len(d.failures) >= fleet.failures_to_cap for d in fleet.devices)

        sent = {d.name: d.telemetry_sent for d in fleet.devices}
        await fleet.wait_for(lambda: all(d.telemetry_sent > sent[d.name]
                                         for d in fleet.devices), 10)
        names = set(sent)
        with watching(broker) as fresh:
            await fresh.wait_for(lambda w: w.all_say(names, online=True))


async def test_leaving_the_fleet_closes_every_socket(broker: MosquittoBroker) -> None:
    assert sockets_to(broker.port) == 0
    async with small_fleet(broker, telemetry_interval_s=0.1) as fleet:
        await fleet.wait_connected(timeout_s=10)
        assert sockets_to(broker.port) == 20
    assert sockets_to(broker.port) == 0


async def test_waiting_for_an_absent_broker_times_out_saying_how_many_are_up() -> None:
    async with Fleet("127.0.0.1", free_port(), 3, reconnect_min_s=0.05,
                     reconnect_max_s=0.1) as fleet:
        with pytest.raises(TimeoutError, match=r"0 of 3 devices connected after 0\.3 s"):
            await fleet.wait_connected(timeout_s=0.3)
        assert all(d.failures for d in fleet.devices)
        assert fleet.connected() == 0


@pytest.mark.parametrize(("low", "high", "failures"), [(0.05, 1.0, 6), (0.5, 60, 8),
                                                        (1.0, 1.0, 1), (0.5, 0.75, 2)])
async def test_the_cap_is_reached_after_the_link_has_doubled_its_window_enough(
    low: float, high: float, failures: int,
) -> None:
    fleet = Fleet("127.0.0.1", 1883, 1, reconnect_min_s=low, reconnect_max_s=high)
    assert fleet.failures_to_cap == failures


@pytest.mark.parametrize("options", [{"n": 0}, {"n": 2, "telemetry_interval_s": -1.0}])
async def test_a_fleet_without_devices_or_with_negative_telemetry_is_refused(
    options: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match=r"device|telemetry"):
        Fleet("127.0.0.1", 1883, **options)


# The storm analysis, a pure function -------------------------------------------------------

def test_a_storm_is_summarised_by_nearest_rank_and_its_busiest_second() -> None:
    report = analyse_storm([1.6, 0.1, 1.5, 0.2, 1.65], 5)
    assert report.complete
    assert (report.first_s, report.p50_s, report.p90_s, report.duration_s) == (
        0.1, 1.5, 1.65, 1.65)
    assert report.peak_rate_per_s == 3.0  # 1.5, 1.6 and 1.65 within one second
    assert analyse_storm([0.0, 0.05, 0.3], 3, window_s=0.1).peak_rate_per_s == 20.0
    seventy = analyse_storm([float(i) for i in range(1, 71)], 70)
    assert (seventy.p50_s, seventy.p90_s) == (35.0, 63.0)  # ranks 35 and 63 of 70


def test_devices_that_never_came_back_make_the_storm_endless() -> None:
    report = analyse_storm([0.4, 0.1], 10)
    assert not report.complete
    assert report.reconnected == 2
    assert report.first_s == 0.1
    assert report.p50_s == report.p90_s == report.duration_s == math.inf
    nobody = analyse_storm([], 3)
    assert (nobody.reconnected, nobody.peak_rate_per_s, nobody.first_s) == (0, 0.0, math.inf)


@pytest.mark.parametrize(("delays", "devices", "window_s"), [
    ([-0.1], 1, 1.0), ([math.nan], 1, 1.0), ([math.inf], 1, 1.0), ([0.1, 0.2], 1, 1.0),
    ([], 0, 1.0), ([0.1], 1, 0.0),
])
def test_impossible_storms_are_refused(delays: list[float], devices: int,
                                       window_s: float) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  # each case fails a different check
        analyse_storm(delays, devices, window_s=window_s)


delays_strategy = st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=60)


@given(delays=delays_strategy, missing=st.integers(0, 20),
       window_s=st.floats(min_value=0.001, max_value=10))
def test_a_storm_report_is_ordered_and_counts_what_it_was_given(
    delays: list[float], missing: int, window_s: float,
) -> None:
    devices = len(delays) + missing
    if devices == 0:
        return
    report = analyse_storm(delays, devices, window_s=window_s)
    assert report.devices == devices
    assert report.reconnected == len(delays)
    assert 0 <= report.first_s <= report.p50_s <= report.p90_s <= report.duration_s
    assert report.duration_s == (max(delays) if missing == 0 and delays else math.inf)
    ordered = sorted(delays) + [math.inf] * missing
    assert report.p90_s == ordered[math.ceil(Fraction(9, 10) * devices) - 1]
    assert report.p50_s == ordered[math.ceil(Fraction(1, 2) * devices) - 1]
    assert report == analyse_storm(sorted(delays, reverse=True), devices, window_s=window_s)
    peak = peak_count(delays, window_s)
    assert report.peak_rate_per_s == peak / window_s
    assert peak == max((sum(t <= s < t + window_s for s in delays) for t in delays), default=0)
    if delays:  # pigeonhole: some window of a grid covering [0, max] holds its share
        windows = math.floor(max(delays) / window_s) + 2
        assert peak >= math.ceil(len(delays) / windows)
