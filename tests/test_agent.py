"""The whole agent end to end: a pty reader, MockFactory pins with door physics, a real
Mosquitto and an independent platform subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.agent import Agent
from edge.config import MqttConfig, load_config
from edge.forwarder import Forwarder
from edge.link import LinkState, MqttLink
from edge.outbox import EventClass, Outbox, StoredEvent
from edge.topics import DeviceTopics
from provisioning.denylist import issue_denylist
from simulators.badge_reader import PtyBadgeReader
from simulators.broker import MosquittoBroker, free_port
from simulators.gpio_world import LockerWorld, WorldPin, world_pin_factory
from simulators.mcu import McuEmulator
from simulators.platform import PlatformRecorder
from simulators.site import DOORS, SITE, VirtualSite, write_site

WAIT_S = 10.0


class Harness:
    """A running agent with its world; records every durable event."""

    def __init__(self, site: VirtualSite) -> None:
        self.events: list[StoredEvent] = []
        self._news = asyncio.Event()
        self.factory = world_pin_factory()
        self.world = LockerWorld(self.factory, DOORS, asyncio.get_running_loop())
        self.agent = Agent(load_config(site.config_path), pin_factory=self.factory,
                           observer=self._observe)

    def _observe(self, event: StoredEvent) -> None:
        self.events.append(event)
        self._news.set()

    async def until(self, check: Callable[[list[StoredEvent]], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not check(self.events):
                self._news.clear()
                await self._news.wait()

    def types(self) -> list[str]:
        return [e.type for e in self.events]


@contextlib.asynccontextmanager
async def running(site: VirtualSite,
                  prepare: Callable[[Harness], None] | None = None) -> AsyncIterator[Harness]:
    """The agent running on ``site``; ``prepare`` sets the world up before it starts."""
    harness = Harness(site)
    if prepare is not None:
        prepare(harness)
    stop = asyncio.Event()
    task = asyncio.ensure_future(harness.agent.run(stop))
    try:
        await asyncio.wait_for(harness.agent.reader_ready.wait(), WAIT_S)
        yield harness
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
        await harness.world.aclose()


def has(event_type: str, compartment: str | None = None) -> Callable[[list[StoredEvent]], bool]:
    return lambda events: any(
        e.type == event_type and (compartment is None or e.fields.get("compartment") == compartment)
        for e in events
    )


async def test_badge_opens_door_and_every_event_reaches_the_platform_in_order(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    async with PlatformRecorder(broker.host, broker.port, SITE) as platform, \
            running(site) as h:
        await asyncio.wait_for(h.agent.link.wait_up(), WAIT_S)
        reader.present("A1", site.badge("ada", groups=("hand-tools",)))
        await h.until(has("door.closed", "A1"))
        await asyncio.wait_for(h.agent.outbox.wait_empty(), WAIT_S)
        expected = sorted(e.seq for e in h.events)
        # Every event, once; the order is kept per class (docs/mqtt-api.md), not across
        # classes, whose batches travel side by side.
        await platform.wait_for(
            lambda p: sorted(int(e["seq"]) for e in p.events) == expected, WAIT_S)
        assert platform.in_order_per_class()

    types = [e["type"] for e in sorted(platform.events, key=lambda e: int(e["seq"]))]
    assert types[0] == "agent.started"
    assert types.index("access.granted") < types.index("door.opened") < types.index("door.closed")
    assert "locker.unlocked" in types
    assert "link.up" in types
    granted = platform.of_type("access.granted")[0]
    assert granted["member"] == "ada"
    assert granted["reason"] == "granted"
    assert granted["class"] == "audit"
    assert platform.duplicates == 0
    pin = h.factory.pin(17)
    assert [s.state for s in pin.states][-2:] == [True, False]
    assert platform.status["lockers-1"]["online"] is False  # goodbye on stop


async def test_decision_is_on_disk_before_the_solenoid_is_energised(
    offline_site: VirtualSite, reader: PtyBadgeReader
) -> None:
    # Offline, so the forwarder cannot delete the row before we look at the file.
    site = offline_site
    seen_at_energise: list[list[tuple[str, str]]] = []
    db_path = site.directory / "outbox.db"

    def on_coil(_pin: WorldPin, energised: bool) -> None:
        if energised:  # read the file through a separate connection, as after a power cut
            with contextlib.closing(sqlite3.connect(db_path)) as db:
                seen_at_energise.append(db.execute(
                    "SELECT type, body FROM events WHERE type LIKE 'access.%'").fetchall())

    async with running(site) as h:
        h.factory.pin(17).listeners.append(on_coil)
        reader.present("A1", site.badge("ada", groups=("hand-tools",)))
        await h.until(has("locker.unlocked", "A1"))
    assert len(seen_at_energise) == 1
    [(event_type, body)] = seen_at_energise[0]
    assert event_type == "access.granted"
    assert '"member":"ada"' in body


async def test_denials_carry_their_reason_and_never_touch_a_coil(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    async with running(site) as h:
        reader.present("B1", site.badge("ben", groups=("batteries",)))
        reader.present("A1", site.badge("ben", groups=("batteries",)))
        reader.present("Z9", site.badge("ben", groups=("batteries",)))
        expired = site.badge("dan", groups=("hand-tools",),
                             not_before=int(time.time()) - 86400 * 3, lifetime_s=86400)
        reader.present("A1", expired)
        await h.until(lambda ev: sum(e.type == "access.denied" for e in ev) == 4)
        denied = [e.fields for e in h.events if e.type == "access.denied"]
    assert [(d["compartment"], d["reason"]) for d in denied] == [
        ("B1", "missing_badge"), ("A1", "not_granted"), ("Z9", "unknown_compartment"),
        ("A1", "expired"),
    ]
    assert denied[0]["missing_badges"] == {"battery-handling": 1}
    assert [s.state for s in h.factory.pin(17).states] == [False]
    assert [s.state for s in h.factory.pin(22).states] == [False]


async def test_garbage_lines_are_counted_and_skipped(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    async with running(site) as h:
        reader.send_raw(b"\x00\xff noise\r\n" + b"x" * 5000 + b"\n" + b"A1 !!!\n")
        reader.present("A1", site.badge("ada", groups=("hand-tools",)))
        await h.until(has("access.granted", "A1"))
        assert h.agent.stats.garbage_lines == 3
        assert h.agent.stats.scans == 1


async def test_broker_outage_unlock_works_and_every_event_arrives_once_in_order(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    async with PlatformRecorder(broker.host, broker.port, SITE) as platform, \
            running(site) as h:
        await asyncio.wait_for(h.agent.link.wait_up(), WAIT_S)
        await asyncio.wait_for(h.agent.outbox.wait_empty(), WAIT_S)
        broker.stop()
        await h.until(has("link.down"))
        assert h.agent.link.state is not LinkState.UP

        reader.present("A1", site.badge("ada", groups=("hand-tools",)))
        await h.until(has("door.closed", "A1"))
        reader.present("B1", site.badge("cleo", groups=("batteries",),
                                        skills=("battery-handling",)))
        await h.until(has("door.closed", "B1"))
        queued = h.agent.outbox.depth
        assert queued >= 8  # link.down, 2 x (granted, opened, pulsed, closed)

        broker.start()
        await asyncio.wait_for(h.agent.outbox.wait_empty(), WAIT_S)
        expected = [e.seq for e in h.events]
        await platform.wait_for(lambda p: {e["seq"] for e in p.events} >= set(expected), WAIT_S)

    received = [int(e["seq"]) for e in platform.events]  # first arrival of each (device, seq)
    assert sorted(received) == expected  # every event, none missing
    assert platform.in_order_per_class()  # and in seq order within each class
    # The agent sent each event exactly once. (A restarted broker may still redeliver
    # QoS 1 messages to a persistent subscriber: the platform drops those by (device, seq).)
    assert h.agent.forwarder.published == len(expected)


async def test_agent_starts_offline_unlocks_and_keeps_events(
    offline_site: VirtualSite, reader: PtyBadgeReader
) -> None:
    site = offline_site
    async with running(site) as h:
        reader.present("A1", site.badge("ada", groups=("hand-tools",)))
        await h.until(has("door.closed", "A1"))
        depth = h.agent.outbox.depth
    assert depth == len(h.events) >= 5
    with contextlib.closing(sqlite3.connect(site.directory / "outbox.db")) as db:
        kept: list[Any] = db.execute("SELECT seq FROM events ORDER BY seq").fetchall()
    assert [row[0] for row in kept] == [e.seq for e in h.events]


async def test_state_snapshot_is_retained_and_republished_on_every_connection(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    async with PlatformRecorder(broker.host, broker.port, SITE) as platform, \
            running(site) as h:
        await platform.wait_for(lambda p: len(p.states) >= 1, WAIT_S)
        assert platform.states[-1]["doors"] == {"A1": "closed", "B1": "closed"}
        broker.stop()
        await h.until(has("link.down"))
        broker.start()
        await platform.wait_for(lambda p: len(p.states) >= 2, WAIT_S)
    assert platform.states[-1]["boot_id"] == h.agent.boot_id


async def test_evicted_telemetry_is_reported_to_the_platform(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = MqttConfig(host=broker.host, port=broker.port, allow_insecure=True,
                        reconnect_min_s=0.05, reconnect_max_s=0.5)
    topics = DeviceTopics(SITE, "tiny-1")
    async with Outbox(tmp_path / "o.db", max_bytes=100_000) as outbox, \
            PlatformRecorder(broker.host, broker.port, SITE) as platform:
        for _ in range(6):  # offline: 6 x 100 x ~500 bytes into a 100 kB budget
            await asyncio.gather(*(outbox.append("sensor.minute", {"pad": "x" * 400},
                                                 event_class=EventClass.TELEMETRY)
                                   for _ in range(100)))
        link = MqttLink(config, topics, boot_id="tiny")
        tasks = [asyncio.ensure_future(link.run()),
                 asyncio.ensure_future(Forwarder(outbox, link, topics).run())]
        try:
            await platform.wait_for(lambda p: bool(p.of_type("outbox.dropped")), WAIT_S)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    [dropped] = platform.of_type("outbox.dropped")
    assert dropped["class"] == "alarm"
    assert dropped["evicted"]["telemetry"] > 0
    first, last = dropped["seqs"]["telemetry"]
    assert first == 1  # the oldest went first
    assert last - first + 1 >= dropped["evicted"]["telemetry"]
    telemetry = [e for e in platform.events if e["class"] == "telemetry"]
    assert all(e["type"] == "sensor.minute" for e in telemetry)


async def test_repeated_forgeries_lock_the_reader_and_raise_an_alarm(
    offline_site: VirtualSite, reader: PtyBadgeReader
) -> None:
    site = offline_site
    async with running(site) as h:
        for _ in range(5):
            reader.present("A1", "forged." + "A" * 40 + ".sig")
        await h.until(has("reader.locked_out"))
        reader.present("A1", site.badge("ada", groups=("hand-tools",)))
        await h.until(lambda ev: any(e.fields.get("reason") == "locked_out" for e in ev))
    reasons = [e.fields["reason"] for e in h.events if e.type == "access.denied"]
    assert reasons == ["malformed"] * 5 + ["locked_out"]
    [alarm] = [e for e in h.events if e.type == "reader.locked_out"]
    assert alarm.event_class is EventClass.ALARM
    assert [s.state for s in h.factory.pin(17).states] == [False]  # nothing opened


async def test_a_retained_denylist_on_the_site_topic_revokes_and_never_rolls_back(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    def signed(version: int, member: str) -> bytes:
        return issue_denylist(site.issuer.key, kid=site.issuer.kid, issuer=site.issuer.name,
                              site=SITE, version=version, now=int(time.time()),
                              entries=[{"sub": member, "until": int(time.time()) + 3600}]
                              ).encode()

    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="platform-denylist")
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    try:
        # Retained before the device connects: it must pick it up on subscribing.
        publisher.publish(f"curbside/v1/{SITE}/denylist", signed(2, "ada"), qos=1,
                          retain=True).wait_for_publish(5)
        async with running(site) as h:
            await h.until(has("denylist.applied"))
            reader.present("A1", site.badge("ada", groups=("hand-tools",)))
            await h.until(has("access.denied", "A1"))
            publisher.publish(f"curbside/v1/{SITE}/denylist", signed(1, "bo"), qos=1,
                              retain=True).wait_for_publish(5)
            await h.until(has("denylist.refused"))
            assert h.agent.denylist.version == 2
    finally:
        publisher.publish(f"curbside/v1/{SITE}/denylist", b"", qos=1, retain=True)
        publisher.disconnect()
        publisher.loop_stop()
    denied = [e for e in h.events if e.type == "access.denied"]
    assert denied[0].fields["reason"] == "revoked"
    [refused] = [e for e in h.events if e.type == "denylist.refused"]
    assert refused.fields["outcome"] == "rollback"
    assert refused.event_class is EventClass.ALARM


async def test_a_door_open_at_start_is_reconciled_and_a_forced_door_raises_an_alarm(
    offline_site: VirtualSite, reader: PtyBadgeReader
) -> None:
    site = offline_site
    async with running(site, prepare=lambda h: h.world.open_door("B1")) as h:
        await h.until(has("lockers.boot_state"))
        h.world.open_door("A1")  # nobody was granted A1
        await h.until(has("door.forced_open", "A1"))
        h.world.close_door("B1")
        await h.until(has("door.closed", "B1"))
        state = await h.agent.snapshot()
    [boot] = [e for e in h.events if e.type == "lockers.boot_state"]
    assert boot.fields["compartments"] == {"A1": {"door": "closed", "state": "locked"},
                                           "B1": {"door": "open", "state": "open"}}
    assert [e.fields["compartment"] for e in h.events if e.type == "door.forced_open"] == ["A1"]
    [forced] = [e for e in h.events if e.type == "door.forced_open"]
    assert forced.event_class is EventClass.ALARM
    assert state["compartments"] == {"A1": "forced", "B1": "locked"}
    assert h.types().index("lockers.boot_state") < h.types().index("door.forced_open")


async def test_a_crashing_task_mid_pulse_leaves_every_output_off(
    offline_site: VirtualSite, reader: PtyBadgeReader
) -> None:
    """Whatever ends the agent, the finally of run() drives the outputs to safe."""
    site = offline_site
    harness = Harness(site)
    harness.world.member = None  # nobody opens the door: only the coil matters here
    agent = harness.agent
    energised = asyncio.Event()
    harness.factory.pin(17).listeners.append(
        lambda _pin, on: on and harness.world.loop.call_soon_threadsafe(energised.set))

    async def crash_when_energised() -> None:
        await energised.wait()
        raise RuntimeError("a task failed mid-pulse")

    agent.forwarder.run = crash_when_energised  # type: ignore[method-assign]
    run = asyncio.ensure_future(agent.run(asyncio.Event()))
    try:
        await asyncio.wait_for(agent.reader_ready.wait(), WAIT_S)
        reader.present("A1", site.badge("ada", groups=("hand-tools",)))
        with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="mid-pulse")):
            await asyncio.wait_for(run, WAIT_S)
    finally:
        await harness.world.aclose()
    assert harness.factory.pin(17).state is False
    assert [s.state for s in harness.factory.pin(17).states][-2:] == [True, False]


async def test_the_agent_on_the_firmware_bridge_unlocks_only_what_the_mcu_acknowledged(
    tmp_path: Path, reader: PtyBadgeReader
) -> None:
    with McuEmulator(outputs=4, inputs=4, heartbeat_s=0.1, link_timeout_s=0.5) as mcu:
        for i in (0, 1):
            mcu.set_input(i, True)  # doors closed...
        async with asyncio.timeout(WAIT_S):  # ...once the firmware's 20 ms debounce agrees
            while not (mcu.input(0) and mcu.input(1)):  # noqa: ASYNC110  # no event for it
                await asyncio.sleep(0.005)
        site = write_site(tmp_path / "site", broker_port=free_port(), reader_url=reader.path,
                          bridge_url=mcu.path)
        async with running(site) as h:
            reader.present("A1", site.badge("ada", groups=("hand-tools",)))
            await h.until(has("locker.unlocked", "A1"))
            mcu.set_input(0, False)
            await h.until(has("door.opened", "A1"))
            mcu.set_input(0, True)
            await h.until(has("door.closed", "A1"))
            mcu.unplug()
            await h.until(lambda ev: sum(e.type == "locker.fault" for e in ev) == 2)
            reader.present("A1", site.badge("ada", groups=("hand-tools",)))
            await h.until(has("locker.unlock_failed", "A1"))
            mcu.plug()
            await h.until(lambda ev: sum(e.type == "locker.recovered" for e in ev) == 2)
    types = [t for t in h.types() if t.startswith(("access.", "locker.", "door."))]
    assert types == ["access.granted", "locker.unlocked", "door.opened", "door.closed",
                     "locker.fault", "locker.fault", "access.granted", "locker.unlock_failed",
                     "locker.recovered", "locker.recovered"]
    [boot] = [e for e in h.events if e.type == "lockers.boot_state"]
    assert boot.fields["backend"] == "bridge"
    assert [c.on for c in mcu.output_log if c.output == 0] == [True, False]  # once
