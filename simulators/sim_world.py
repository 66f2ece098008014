"""The physical world around a simulated site's devices: the air its curb sensors breathe,
and the doors behind the firmware bridge's microcontroller (the GPIO doors are
:class:`~simulators.gpio_world.LockerWorld`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from simulators.gpio_world import Member, member_uses
from simulators.mcu import McuEmulator


class Air:
    """The air a curb sensor breathes: what :meth:`set` says, from then on, with the few
    per cent of turbulence real air has (a sensor reading the very same values again and
    again is one the agent calls stuck)."""

    def __init__(self, pm2_5: float = 8.0, pm10: float = 12.0, *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)  # noqa: S311  # turbulence, not cryptography
        self._values = {"pm1_0": pm2_5 * 0.7, "pm2_5": pm2_5, "pm10": pm10}

    def set(self, *, pm2_5: float | None = None, pm10: float | None = None) -> None:
        with self._lock:
            if pm2_5 is not None:
                self._values["pm2_5"], self._values["pm1_0"] = pm2_5, pm2_5 * 0.7
            if pm10 is not None:
                self._values["pm10"] = pm10
            self._values["pm10"] = max(self._values["pm10"], self._values["pm2_5"])

    def __call__(self, _t: float) -> Mapping[str, float]:
        with self._lock:
            return {k: max(0.0, v * self._rng.uniform(0.95, 1.05))
                    for k, v in self._values.items()}


@dataclass
class McuDoors:
    """Door physics on the microcontroller emulator's inputs.

    Levels are the bridge protocol's (docs/firmware-bridge.md): 1 is *active*, a door
    closed. Every door starts closed; :meth:`settled` waits until the firmware's debounce
    reports them so.
    """

    mcu: McuEmulator
    outputs: dict[int, str]  # output channel -> compartment
    inputs: dict[str, int]  # compartment -> door input
    loop: asyncio.AbstractEventLoop
    member: Member | None = field(default_factory=Member)
    once: dict[str, Member | None] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.mcu.on_output = self._coil
        for compartment in self.inputs:
            self.close_door(compartment)

    async def settled(self, timeout_s: float = 2.0) -> None:
        """Return once the firmware reports every door as it physically is (debounced)."""
        async with asyncio.timeout(timeout_s):
            while any(self.mcu.input(i) != self.mcu.physical(i)  # noqa: ASYNC110  # no event
                      for i in self.inputs.values()):
                await asyncio.sleep(0.005)

    def _coil(self, channel: int, energised: bool) -> None:
        compartment = self.outputs.get(channel)
        if compartment is not None and energised:
            with contextlib.suppress(RuntimeError):  # loop closed: the world has ended
                self.loop.call_soon_threadsafe(self._unlocked, compartment)

    def _unlocked(self, compartment: str) -> None:
        member = self.once.pop(compartment, self.member)
        if member is not None:
            task = self.loop.create_task(member_uses(self, compartment, member))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def open_door(self, compartment: str) -> None:
        self.mcu.set_input(self.inputs[compartment], False)

    def close_door(self, compartment: str) -> None:
        self.mcu.set_input(self.inputs[compartment], True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
