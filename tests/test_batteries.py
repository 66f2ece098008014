"""Battery monitors on ptys (JBD BMS, VE.Direct), the charger relay, and the battery
bay end to end: a loan refused when the battery is not ready, a swap signed when one
comes back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory

from edge.batteries import BatteryMonitor
from edge.config import BatteryConfig
from edge.events import EventClass
from edge.outbox import StoredEvent
from provisioning.records import RecordVerifier
from simulators.badge_reader import PtyBadgeReader
from simulators.batteries import BatteryModel, JbdBmsSim, VeDirectSim
from simulators.site import VirtualSite
from tests.test_agent import has, running


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any], EventClass]] = []
        self._news = asyncio.Event()

    async def record(self, kind: str, fields: dict[str, Any], cls: EventClass) -> None:
        self.items.append((kind, fields, cls))
        self._news.set()

    def types(self) -> list[str]:
        return [k for k, _, _ in self.items]

    async def until(self, check: Callable[[Events], bool]) -> None:
        async with asyncio.timeout(10):
            while not check(self):
                self._news.clear()
                await self._news.wait()


@contextlib.asynccontextmanager
async def monitoring(monitor: BatteryMonitor) -> AsyncIterator[None]:
    task = asyncio.ensure_future(monitor.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_jbd_bms_is_read_gated_and_followed_in_and_out() -> None:
    model = BatteryModel(soc_pct=42.0, temperature_c=22.0)
    with JbdBmsSim(model, seed=1) as bms:
        events = Events()
        config = BatteryConfig(id="bank-1", kind="jbd", url=bms.path, compartment="B1",
                               interval_s=0.5, absent_after_s=1.5)
        monitor = BatteryMonitor(config, record=events.record)
        async with monitoring(monitor):
            await events.until(lambda e: "battery.reading" in e.types())
            assert monitor.readiness() == ["charge 42% below 80%"]
            model.soc_pct = 95.0
            model.set_protection("cell_overvoltage", True)
            await events.until(lambda e: monitor.state is not None
                               and bool(monitor.state.protection))
            assert monitor.readiness() == ["protection: cell_overvoltage"]
            model.set_protection("cell_overvoltage", False)
            await events.until(lambda e: monitor.readiness() == [])
            bms.unplug()  # the member takes the battery
            await events.until(lambda e: "battery.taken" in e.types())
            bms.plug()
            await events.until(lambda e: "battery.returned" in e.types())
    reading = next(f for k, f, _ in events.items if k == "battery.reading")
    assert reading["soc_pct"] == pytest.approx(42.0, abs=1)
    assert len(reading["temperatures_c"]) >= 1
    assert reading["cell_min_v"] <= reading["cell_max_v"]
    assert events.types().index("battery.present") < events.types().index("battery.taken")
    assert events.types().count("battery.returned") == 1  # found at start is not a return
    classes = {k: c for k, _, c in events.items}
    assert classes["battery.reading"] is EventClass.TELEMETRY
    assert classes["battery.returned"] is EventClass.AUDIT


async def test_a_vedirect_shunt_streams_and_hex_frames_do_not_disturb() -> None:
    model = BatteryModel(soc_pct=88.0, temperature_c=18.0)
    with VeDirectSim(model, seed=2, period_s=0.2, hex_rate=0.5) as shunt:
        events = Events()
        config = BatteryConfig(id="bank-2", kind="vedirect", url=shunt.path, interval_s=0.5)
        monitor = BatteryMonitor(config, record=events.record)
        async with monitoring(monitor):
            await events.until(lambda e: e.types().count("battery.reading") >= 2)
    assert monitor.state is not None
    assert monitor.state.soc_pct == pytest.approx(88.0, abs=1)
    assert monitor.readiness() == []


async def test_the_charger_relay_stops_when_hot_and_resumes_when_cool() -> None:
    model = BatteryModel(soc_pct=60.0, temperature_c=30.0)
    factory = MockFactory()
    relay = DigitalOutputDevice(24, initial_value=False, pin_factory=factory)
    with JbdBmsSim(model, seed=3) as bms:
        events = Events()
        config = BatteryConfig(id="bank-1", kind="jbd", url=bms.path, interval_s=0.3)
        monitor = BatteryMonitor(config, record=events.record)
        monitor.attach_charger(relay)
        async with monitoring(monitor):
            await events.until(lambda e: bool(relay.value))
            model.temperature_c = 47.0
            await events.until(lambda e: not relay.value)
            model.temperature_c = 42.0  # between the limits: stays off
            await events.until(lambda e: monitor.state is not None
                               and 41 < max(monitor.state.temperatures_c) < 43)
            assert not relay.value
            model.temperature_c = 35.0
            await events.until(lambda e: bool(relay.value))
    assert relay.value == 0  # off when the monitor stops
    relay.close()


async def test_a_battery_bay_gates_the_loan_and_signs_the_swap(
        tmp_path: Any, reader: PtyBadgeReader, offline_site: VirtualSite) -> None:
    site = offline_site
    model = BatteryModel(soc_pct=40.0, temperature_c=21.0)
    with JbdBmsSim(model, seed=4) as bms:
        with site.config_path.open("a", encoding="utf-8") as fh:
            fh.write(f'\n[[batteries]]\nid = "bank-1"\nkind = "jbd"\nurl = "{bms.path}"\n'
                     'compartment = "B1"\ninterval_s = 0.3\nabsent_after_s = 1.0\n')
        badge = site.badge("cleo", groups=("batteries",), skills={"battery-handling": 1})

        def battery_read(events: list[StoredEvent]) -> bool:
            return any(e.type == "battery.reading" for e in events)

        async with running(site) as h:
            await h.until(battery_read)
            reader.present("B1", badge)
            await h.until(has("access.denied", "B1"))
            model.soc_pct = 96.0
            async with asyncio.timeout(10):
                while h.agent.bays.monitors["bank-1"].readiness():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            reader.present("B1", badge)
            await h.until(has("locker.unlocked", "B1"))
            bms.unplug()
            await h.until(has("battery.taken"))
            bms.plug()
            await h.until(has("battery.swapped"))
            state = await h.agent.snapshot()
    [denied] = [e for e in h.events if e.type == "access.denied"]
    assert denied.fields["reason"] == "battery_not_ready"
    assert denied.fields["details"] == ["charge 40% below 80%"]
    [swapped] = [e for e in h.events if e.type == "battery.swapped"]
    key = h.agent.device_key
    record = RecordVerifier({key.kid: key.key.public_key()}, site="elm-street").verify_swap(
        swapped.fields["record"])
    assert (record.member, record.bay) == ("cleo", "B1")
    assert record.taken is not None
    assert record.returned is not None
    assert state["batteries"]["bank-1"]["present"] is True
    assert state["device_key"]["kid"] == key.kid


async def test_an_unplugged_monitor_is_reopened_not_fatal() -> None:
    model = BatteryModel(soc_pct=90.0)
    sim = JbdBmsSim(model, seed=6)
    events = Events()
    config = BatteryConfig(id="bank-1", kind="jbd", url=sim.path, interval_s=0.2,
                           absent_after_s=0.6)
    monitor = BatteryMonitor(config, record=events.record)
    task = asyncio.ensure_future(monitor.run())
    try:
        await events.until(lambda e: "battery.reading" in e.types())
        sim.close()  # the USB adapter is pulled: reads end, writes fail
        # The presence watch lives inside run(): it reports the battery gone only if
        # run() survived the failing port (and keeps reopening it).
        await events.until(lambda e: "battery.taken" in e.types())
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task



async def test_no_swap_credit_without_a_loan_that_opened_the_bay(
        reader: PtyBadgeReader, offline_site: VirtualSite) -> None:
    site = offline_site
    model = BatteryModel(soc_pct=95.0, temperature_c=21.0)
    with JbdBmsSim(model, seed=7) as bms:
        with site.config_path.open("a", encoding="utf-8") as fh:
            fh.write(f'\n[[batteries]]\nid = "bank-1"\nkind = "jbd"\nurl = "{bms.path}"\n'
                     'compartment = "B1"\ninterval_s = 0.3\nabsent_after_s = 1.0\n')
        badge = site.badge("mallory", groups=("batteries", "hand-tools"),
                           skills={"battery-handling": 1}, use_limit=1)
        async with running(site) as h:
            await h.until(has("battery.present"))
            reader.present("A1", badge)  # the single use goes on A1
            await h.until(has("locker.unlocked", "A1"))
            reader.present("B1", badge)
            await h.until(has("access.denied", "B1"))
            bms.unplug()
            await h.until(has("battery.taken"))
            bms.plug()
            await h.until(has("battery.returned"))
    [denied] = [e for e in h.events if e.type == "access.denied"]
    assert denied.fields["reason"] == "used_up"
    assert not any(e.type == "battery.swapped" for e in h.events)
