"""Lockers on gpiozero MockFactory pins: safe start, capped pulses, one coil, door events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from edge.config import CompartmentConfig, GpioHardware
from edge.errors import HardwareError
from edge.gpio import build_pin_factory
from edge.lockers import LockerBank

CONFIGS = (
    CompartmentConfig(id="A1", solenoid_pin=17, door_pin=27, pulse_ms=100),
    CompartmentConfig(id="B1", solenoid_pin=22, door_pin=23, pulse_ms=100),
)


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory()


def coil(factory: Any, pin: int) -> Any:
    return factory.pin(pin)


async def test_outputs_start_off_and_are_off_after_close(factory: Any) -> None:
    bank = LockerBank(CONFIGS, factory)
    assert coil(factory, 17).state is False
    assert coil(factory, 22).state is False
    bank.close()
    assert coil(factory, 17).state is False


async def test_unlock_pulses_for_the_configured_time(factory: Any) -> None:
    bank = LockerBank(CONFIGS, factory)
    try:
        started = time.monotonic()
        await bank.unlock("A1")
        elapsed = time.monotonic() - started
        pin = coil(factory, 17)
        assert [s.state for s in pin.states] == [False, True, False]
        on_for = pin.states[2].timestamp  # time since the previous change
        assert 0.09 <= on_for < 0.5
        assert elapsed >= 0.09
    finally:
        bank.close()


async def test_only_one_coil_is_energised_at_a_time(factory: Any) -> None:
    bank = LockerBank(CONFIGS, factory)
    overlaps: list[float] = []

    async def watch() -> None:
        while True:
            if coil(factory, 17).state and coil(factory, 22).state:
                overlaps.append(time.monotonic())
            await asyncio.sleep(0.001)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.gather(bank.unlock("A1"), bank.unlock("B1"))
    finally:
        watcher.cancel()
        bank.close()
    assert overlaps == []
    assert [s.state for s in coil(factory, 17).states] == [False, True, False]
    assert [s.state for s in coil(factory, 22).states] == [False, True, False]


async def test_pulse_ends_even_when_the_event_loop_is_blocked(factory: Any) -> None:
    bank = LockerBank(CONFIGS, factory)
    try:
        pulse = bank.unlock("A1")
        task = asyncio.ensure_future(pulse)
        await asyncio.sleep(0.01)
        assert coil(factory, 17).state is True
        time.sleep(0.3)  # noqa: ASYNC251  # stalls the loop on purpose: the timer thread must act
        assert coil(factory, 17).state is False
        await task
    finally:
        bank.close()


async def test_closing_mid_pulse_drives_the_coil_off(factory: Any) -> None:
    bank = LockerBank(CONFIGS, factory)
    task = asyncio.ensure_future(bank.unlock("A1"))
    await asyncio.sleep(0.01)
    assert coil(factory, 17).state is True
    bank.close()
    assert coil(factory, 17).state is False
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_door_changes_reach_the_loop(factory: Any) -> None:
    bank = LockerBank(CONFIGS, factory)
    changes: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
    bank.watch_doors(asyncio.get_running_loop(), lambda cid, closed: changes.put_nowait(
        (cid, closed)))
    try:
        door = factory.pin(27)
        assert bank.door_states()["A1"] is False  # pull-up, nothing holding it low: open
        door.drive_low()
        assert await asyncio.wait_for(changes.get(), 1) == ("A1", True)
        door.drive_high()
        assert await asyncio.wait_for(changes.get(), 1) == ("A1", False)
    finally:
        bank.close()


def test_missing_pin_factory_fails_loudly_without_fallback() -> None:
    with pytest.raises(HardwareError, match="pin factory 'pigpio'"):
        build_pin_factory(GpioHardware(backend="gpio", pin_factory="pigpio"))


def test_pin_in_use_is_a_hardware_error(factory: Any) -> None:
    clash = (*CONFIGS, CompartmentConfig(id="C1", solenoid_pin=17, door_pin=5))
    with pytest.raises(HardwareError, match="solenoid on pin 17"):
        LockerBank(clash, factory)
    assert coil(factory, 22).state is False
