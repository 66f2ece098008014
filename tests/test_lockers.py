"""The locker bank on gpiozero MockFactory pins: safe start, capped pulses, one coil at a
time, the duty budget, maglocks, and door, feedback and item inputs through the machines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from edge.compartment import Emit
from edge.config import CompartmentConfig, GpioHardware
from edge.errors import HardwareError
from edge.gpio import build_pin_factory
from edge.gpio_backend import GpioBackend
from edge.locker_backend import UnlockFailed
from edge.lockers import LockerBank

CONFIGS = (
    CompartmentConfig(id="A1", solenoid_pin=17, door_pin=27, pulse_ms=100, debounce_ms=10),
    CompartmentConfig(id="B1", solenoid_pin=22, door_pin=23, pulse_ms=100, debounce_ms=10),
)


class Rig:
    """A bank on mock pins, with every event it emits."""

    def __init__(self, factory: Any, configs: tuple[CompartmentConfig, ...]) -> None:
        self.factory = factory
        self.events: list[Emit] = []
        self._news = asyncio.Event()
        self.bank = LockerBank(configs, GpioBackend(configs, factory), self._emit)

    def _emit(self, emit: Emit) -> None:
        self.events.append(emit)
        self._news.set()

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    async def until(self, check: Callable[[list[str]], bool]) -> None:
        async with asyncio.timeout(5):
            while not check(self.types()):
                self._news.clear()
                await self._news.wait()

    def pin(self, number: int) -> Any:
        return self.factory.pin(number)

    async def energised(self, number: int) -> None:
        """Wait (5 s at most) until the output pin is high."""
        async with asyncio.timeout(5):
            while not self.pin(number).state:  # noqa: ASYNC110  # a mock pin has no event to await
                await asyncio.sleep(0.001)

    def drive(self, *closed: int) -> None:
        """Hold these input pins low (a closed switch), after the devices exist: their
        pull-ups reset a mock pin's level."""
        for number in closed:
            self.pin(number).drive_low()


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory()


@pytest.fixture
async def rig(factory: Any) -> AsyncIterator[Rig]:
    rig = Rig(factory, CONFIGS)
    rig.drive(27, 23)  # doors closed
    await rig.bank.start()
    yield rig
    await rig.bank.close()


async def test_outputs_start_off_and_are_off_after_close(factory: Any) -> None:
    rig = Rig(factory, CONFIGS)
    boot = await rig.bank.start()
    assert rig.pin(17).state is False
    assert rig.pin(22).state is False
    assert boot["A1"] == {"door": "open", "state": "open"}  # nothing holds the input low
    assert rig.events == []  # an open door at start raises no alarm
    await rig.bank.close()
    assert [s.state for s in rig.pin(17).states] == [False]  # never energised


async def test_unlock_pulses_for_the_configured_time_and_says_who(rig: Rig) -> None:
    started = time.monotonic()
    assert await rig.bank.unlock("A1", {"member": "ada"}) == 100
    elapsed = time.monotonic() - started
    pin = rig.pin(17)
    assert [s.state for s in pin.states] == [False, True, False]
    assert 0.09 <= pin.states[2].timestamp < 0.5  # on for the pulse, measured by the mock
    assert elapsed >= 0.09
    assert [(e.type, e.fields) for e in rig.events] == [
        ("locker.unlocked", {"compartment": "A1", "pulse_ms": 100, "member": "ada"})]


async def test_only_one_coil_is_energised_at_a_time(rig: Rig) -> None:
    overlaps: list[float] = []

    async def watch() -> None:
        while True:
            if rig.pin(17).state and rig.pin(22).state:
                overlaps.append(time.monotonic())
            await asyncio.sleep(0.001)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.gather(*(rig.bank.unlock(c) for c in ("A1", "B1", "A1", "B1")))
    finally:
        watcher.cancel()
    assert overlaps == []
    assert [s.state for s in rig.pin(17).states] == [False, True, False, True, False]
    assert [s.state for s in rig.pin(22).states] == [False, True, False, True, False]


async def test_the_cap_holds_with_the_event_loop_blocked_for_5_s(rig: Rig) -> None:
    task = asyncio.ensure_future(rig.bank.unlock("A1"))
    await rig.energised(17)
    time.sleep(5)  # noqa: ASYNC251  # stalls the loop on purpose: the timer thread must act
    on_for = rig.pin(17).states[2].timestamp  # the mock's own clock: when it went off
    assert rig.pin(17).state is False
    assert on_for < 0.5
    await task


async def test_closing_mid_pulse_drives_the_coil_off(rig: Rig) -> None:
    task = asyncio.ensure_future(rig.bank.unlock("A1"))
    await rig.energised(17)
    await rig.bank.close()
    assert rig.pin(17).state is False
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_duty_budget_refuses_a_pulse_before_energising(factory: Any) -> None:
    configs = (CompartmentConfig(id="A1", solenoid_pin=17, door_pin=27, pulse_ms=100,
                                 duty_budget_s=0.25, duty_window_s=60),)
    rig = Rig(factory, configs)
    rig.drive(27)
    await rig.bank.start()
    try:
        await rig.bank.unlock("A1")
        await rig.bank.unlock("A1")
        with pytest.raises(UnlockFailed, match="duty budget"):
            await rig.bank.unlock("A1", {"member": "ada"})
    finally:
        await rig.bank.close()
    assert [s.state for s in rig.pin(17).states].count(True) == 2
    failed = rig.events[-1]
    assert (failed.type, failed.alarm, failed.fields["member"]) == (
        "locker.unlock_failed", True, "ada")


async def test_a_door_forced_open_raises_an_alarm_and_a_granted_one_does_not(rig: Rig) -> None:
    await rig.bank.unlock("A1", {"member": "ada"})
    rig.pin(27).drive_high()  # opened after the grant
    rig.pin(23).drive_high()  # B1 opened with no grant
    await rig.until(lambda t: "door.forced_open" in t and "door.opened" in t)
    opened = next(e for e in rig.events if e.type == "door.opened")
    forced = next(e for e in rig.events if e.type == "door.forced_open")
    assert (opened.fields, opened.alarm) == ({"compartment": "A1", "member": "ada"}, False)
    assert (forced.fields, forced.alarm) == ({"compartment": "B1"}, True)
    assert rig.bank.states() == {"A1": "open", "B1": "forced"}
    rig.pin(27).drive_low()
    await rig.until(lambda t: "door.closed" in t)
    assert rig.bank.states()["A1"] == "locked"


async def test_a_bouncing_door_switch_is_one_change(rig: Rig) -> None:
    await rig.bank.unlock("A1")
    for _ in range(5):  # contact bounce, faster than the 10 ms debounce
        rig.pin(27).drive_high()
        rig.pin(27).drive_low()
    rig.pin(27).drive_high()
    await rig.until(lambda t: "door.opened" in t)
    assert rig.types().count("door.opened") == 1
    assert "door.closed" not in rig.types()


async def test_maglock_holds_after_start_releases_to_unlock_and_is_off_on_close(
        factory: Any) -> None:
    configs = (CompartmentConfig(id="M1", solenoid_pin=5, door_pin=6, pulse_ms=100,
                                 lock="maglock"),)
    rig = Rig(factory, configs)
    rig.drive(6)
    await rig.bank.start()
    assert rig.pin(5).state is True  # holding, once the door has been read
    await rig.bank.unlock("M1")
    assert rig.pin(5).state is True  # holding again after the release
    await rig.bank.close()
    assert [s.state for s in rig.pin(5).states] == [False, True, False, True, False]


async def test_lock_feedback_and_item_presence_inputs(factory: Any) -> None:
    configs = (CompartmentConfig(id="T1", solenoid_pin=5, door_pin=6, feedback_pin=13,
                                 item_pin=19, pulse_ms=100, debounce_ms=10),)
    rig = Rig(factory, configs)
    rig.drive(6, 13, 19)  # closed, locked, tool in place
    boot = await rig.bank.start()
    assert boot["T1"] == {"door": "closed", "state": "locked", "lock": "locked",
                          "item": "present"}
    try:
        task = asyncio.ensure_future(rig.bank.unlock("T1", {"member": "ada"}))
        await rig.energised(5)
        rig.pin(13).drive_high()  # the strike reports unlocked during the pulse
        await task
        rig.pin(6).drive_high()  # door opens
        await rig.until(lambda t: "door.opened" in t)
        rig.pin(19).drive_high()  # the tool is taken
        await rig.until(lambda t: "item.checked_out" in t)
        rig.pin(6).drive_low()
        rig.pin(13).drive_low()  # closed and latched
        await rig.until(lambda t: "locker.locked" in t)
    finally:
        await rig.bank.close()
    assert rig.types() == ["locker.unlocked", "door.opened", "item.checked_out", "door.closed",
                           "locker.locked"]
    checked_out = rig.events[2]
    assert (checked_out.audit, checked_out.fields["member"]) == (True, "ada")


def test_missing_pin_factory_fails_loudly_without_fallback() -> None:
    with pytest.raises(HardwareError, match="pin factory 'pigpio'"):
        build_pin_factory(GpioHardware(backend="gpio", pin_factory="pigpio"))


def test_pin_in_use_is_a_hardware_error(factory: Any) -> None:
    clash = (*CONFIGS, CompartmentConfig(id="C1", solenoid_pin=17, door_pin=5))
    with pytest.raises(HardwareError, match="lock output on pin 17"):
        GpioBackend(clash, factory)
    assert factory.pin(22).state is False


async def test_feedback_lagging_the_coil_still_counts_and_no_feedback_fails(
        factory: Any) -> None:
    configs = (CompartmentConfig(id="T1", solenoid_pin=5, door_pin=6, feedback_pin=13,
                                 pulse_ms=100, debounce_ms=10),)
    rig = Rig(factory, configs)
    rig.drive(6, 13)
    await rig.bank.start()
    try:
        task = asyncio.ensure_future(rig.bank.unlock("T1", {"member": "ada"}))
        await rig.energised(5)
        await asyncio.sleep(0.095)  # the latch monitor reports at the very end of the pulse
        rig.pin(13).drive_high()
        assert await task == 100
        rig.pin(13).drive_low()  # relatched (the door never opened)
        await rig.until(lambda t: "locker.unlocked" in t)
        with pytest.raises(UnlockFailed, match="did not report unlocked"):
            await rig.bank.unlock("T1", {"member": "bo"})  # the latch never moves
    finally:
        await rig.bank.close()
    assert rig.types().count("locker.unlock_failed") == 1
    assert "locker.fault" not in rig.types()


async def test_a_door_opened_while_its_grant_waits_for_the_coil_is_forced(rig: Rig) -> None:
    first = asyncio.ensure_future(rig.bank.unlock("A1", {"member": "ada"}))
    await rig.energised(17)
    second = asyncio.ensure_future(rig.bank.unlock("B1", {"member": "bo"}))
    rig.pin(23).drive_high()  # B1 pulled open before its coil was ever energised
    await rig.until(lambda t: "door.forced_open" in t)
    await asyncio.gather(first, second)
    unlocked = [e.fields for e in rig.events if e.type == "locker.unlocked"]
    assert [(f["compartment"], f["member"]) for f in unlocked] == [("A1", "ada"), ("B1", "bo")]


async def test_unlocked_is_reported_when_the_lock_operates_before_the_door_opens(
        rig: Rig) -> None:
    task = asyncio.ensure_future(rig.bank.unlock("A1", {"member": "ada"}))
    await rig.energised(17)
    rig.pin(27).drive_high()  # the member pulls while the coil is on
    await task
    await rig.until(lambda t: "door.opened" in t)
    assert rig.types()[:2] == ["locker.unlocked", "door.opened"]
