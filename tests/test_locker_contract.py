"""One contract, two backends: GPIO (MockFactory pins) and the firmware bridge (the
microcontroller emulator on a pty). Every test here runs over both."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Protocol

import pytest
from gpiozero.pins.mock import MockFactory

from edge.bridge_backend import BridgeBackend
from edge.compartment import Emit
from edge.config import BridgeHardware, CompartmentConfig
from edge.gpio_backend import GpioBackend
from edge.locker_backend import LockerBackend
from edge.lockers import LockerBank
from simulators.mcu import McuEmulator

# On the bridge the pins are the microcontroller's output and input numbers.
CONFIGS = (
    CompartmentConfig(id="A1", solenoid_pin=0, door_pin=0, pulse_ms=150, debounce_ms=10),
    CompartmentConfig(id="B1", solenoid_pin=1, door_pin=1, pulse_ms=150, debounce_ms=10),
    CompartmentConfig(id="M1", solenoid_pin=2, door_pin=2, pulse_ms=150, debounce_ms=10,
                      lock="maglock"),
)
GPIO_PINS = {"A1": (17, 27), "B1": (22, 23), "M1": (5, 6)}  # (output, door) BCM numbers


class Hardware(Protocol):
    """The far side of a backend, as a test sees it."""

    def backend(self) -> LockerBackend: ...
    def set_door(self, compartment: str, closed: bool) -> None: ...
    def output(self, compartment: str) -> bool: ...
    def changes(self, compartment: str) -> list[tuple[float, bool]]: ...
    async def settled(self) -> None: ...


class GpioHardware:
    def __init__(self) -> None:
        self.factory = MockFactory()
        configs = tuple(c.model_copy(update={"solenoid_pin": GPIO_PINS[c.id][0],
                                             "door_pin": GPIO_PINS[c.id][1]}) for c in CONFIGS)
        self._backend = GpioBackend(configs, self.factory)

    def backend(self) -> LockerBackend:
        return self._backend

    def set_door(self, compartment: str, closed: bool) -> None:
        pin = self.factory.pin(GPIO_PINS[compartment][1])
        pin.drive_low() if closed else pin.drive_high()

    def output(self, compartment: str) -> bool:
        return bool(self.factory.pin(GPIO_PINS[compartment][0]).state)

    async def settled(self) -> None:
        """Pin levels are read directly: nothing to wait for."""

    def changes(self, compartment: str) -> list[tuple[float, bool]]:
        """Changes with monotonic times: a mock pin stamps each change with the time since
        the one before, and keeps the time of the last (so pins share one clock)."""
        pin = self.factory.pin(GPIO_PINS[compartment][0])
        at, out = pin._last_change, []
        for state in reversed(pin.states[1:]):
            out.append((at, bool(state.state)))
            at -= state.timestamp
        return out[::-1]


class BridgeHardware_:
    def __init__(self, mcu: McuEmulator) -> None:
        self.mcu = mcu
        self._backend = _bridge_backend(mcu)

    def backend(self) -> LockerBackend:
        return self._backend

    def set_door(self, compartment: str, closed: bool) -> None:
        self.mcu.set_input(_index(compartment), closed)

    def output(self, compartment: str) -> bool:
        return self.mcu.output(_index(compartment))

    def changes(self, compartment: str) -> list[tuple[float, bool]]:
        return [(c.at, c.on) for c in self.mcu.output_log if c.output == _index(compartment)]

    async def settled(self) -> None:
        """Until the firmware's debounced inputs match the physical ones (20 ms)."""
        async with asyncio.timeout(2):
            while any(self.mcu.input(i) != self.mcu.physical(i) for i in range(3)):  # noqa: ASYNC110  # no event for this
                await asyncio.sleep(0.005)


def _index(compartment: str) -> int:
    return next(int(c.solenoid_pin) for c in CONFIGS if c.id == compartment)


def _bridge_backend(mcu: McuEmulator) -> LockerBackend:
    from edge.bridge_backend import BridgeBackend  # noqa: PLC0415  # as the agent does

    return BridgeBackend(CONFIGS, BridgeHardware(backend="bridge", url=mcu.path,
                                                 heartbeat_s=0.1, link_timeout_s=0.5))


@pytest.fixture(params=["gpio", "bridge"])
def hardware(request: pytest.FixtureRequest) -> Iterator[Hardware]:
    if request.param == "gpio":
        yield GpioHardware()
        return
    with McuEmulator(outputs=4, inputs=4, heartbeat_s=0.1, link_timeout_s=0.5) as mcu:
        yield BridgeHardware_(mcu)


class Bank:
    def __init__(self, hardware: Hardware) -> None:
        self.events: list[Emit] = []
        self._news = asyncio.Event()
        self.bank = LockerBank(CONFIGS, hardware.backend(), self._emit)

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


@pytest.fixture
async def bank(hardware: Hardware) -> AsyncIterator[Bank]:
    for cid in ("A1", "B1", "M1"):
        hardware.set_door(cid, closed=True)
    await hardware.settled()
    wrapped = Bank(hardware)
    yield wrapped
    await wrapped.bank.close()


async def test_start_reads_the_doors_and_energises_no_strike(hardware: Hardware,
                                                             bank: Bank) -> None:
    hardware.set_door("B1", closed=False)
    await hardware.settled()
    boot = await bank.bank.start()
    assert {cid: report["door"] for cid, report in boot.items()} == {
        "A1": "closed", "B1": "open", "M1": "closed"}
    assert bank.events == []  # no alarm for a door found open
    assert hardware.changes("A1") == []
    assert hardware.changes("B1") == []
    assert hardware.output("M1") is True  # the maglock holds once the doors are read


async def test_unlock_operates_the_lock_once_for_the_pulse(hardware: Hardware,
                                                           bank: Bank) -> None:
    await bank.bank.start()
    assert await bank.bank.unlock("A1", {"member": "ada"}) == 150
    changes = hardware.changes("A1")
    assert [on for _, on in changes] == [True, False]
    assert 0.1 <= changes[1][0] - changes[0][0] < 0.5
    assert bank.types() == ["locker.unlocked"]
    assert hardware.output("A1") is False


async def test_one_coil_at_a_time_under_concurrent_grants(hardware: Hardware,
                                                          bank: Bank) -> None:
    await bank.bank.start()
    await asyncio.gather(*(bank.bank.unlock(cid) for cid in ("A1", "B1", "A1", "B1")))
    spans = []
    for cid in ("A1", "B1"):
        changes = hardware.changes(cid)
        assert [on for _, on in changes] == [True, False, True, False]
        spans += [(changes[i][0], changes[i + 1][0]) for i in (0, 2)]
    spans.sort()
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))


async def test_doors_go_through_the_state_machine(hardware: Hardware, bank: Bank) -> None:
    await bank.bank.start()
    await bank.bank.unlock("A1", {"member": "ada"})
    hardware.set_door("A1", closed=False)
    await bank.until(lambda t: "door.opened" in t)
    hardware.set_door("B1", closed=False)
    await bank.until(lambda t: "door.forced_open" in t)
    hardware.set_door("A1", closed=True)
    await bank.until(lambda t: "door.closed" in t)
    assert bank.bank.states() == {"A1": "locked", "B1": "forced", "M1": "locked"}


async def test_close_mid_pulse_leaves_every_output_off(hardware: Hardware,
                                                       bank: Bank) -> None:
    await bank.bank.start()
    task = asyncio.ensure_future(bank.bank.unlock("A1"))
    async with asyncio.timeout(5):
        while not hardware.output("A1"):  # noqa: ASYNC110  # no event for a pin level
            await asyncio.sleep(0.001)
    started = time.monotonic()
    await bank.bank.close()
    assert hardware.output("A1") is False
    assert hardware.output("M1") is False  # a maglock releases: fail-safe
    assert time.monotonic() - started < 0.5
    task.cancel()
    with pytest.raises((asyncio.CancelledError, Exception)):
        await task


async def test_maglock_releases_for_the_pulse_and_holds_again(hardware: Hardware,
                                                              bank: Bank) -> None:
    await bank.bank.start()
    await bank.bank.unlock("M1")
    assert [on for _, on in hardware.changes("M1")] == [True, False, True]
    assert hardware.output("M1") is True


def test_the_contract_covers_every_backend() -> None:
    names = {GpioBackend.name, _backend_name()}
    assert names == {"gpio", "bridge"}


def _backend_name() -> str:
    return BridgeBackend.name

