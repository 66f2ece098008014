"""The GPIO locker backend: gpiozero devices on an injected pin factory.

lgpio on a Pi (on a Pi 5 the header is gpiochip0 with current kernels, which lgpio
picks itself; under systemd lgpio needs a writable working directory for its
notification pipes, ``LG_WD``: see docs/hardware.md), MockFactory in simulation.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from edge.config import CompartmentConfig
from edge.gpio import InputSwitch, LockOutput
from edge.locker_backend import InputCallback, LinkCallback, StartedCallback


class GpioBackend:
    """Every compartment's lock output and input switches on one pin factory."""

    name = "gpio"
    debounces = False  # gpiozero reports every edge: the state machines debounce

    def __init__(self, compartments: tuple[CompartmentConfig, ...], pin_factory: Any) -> None:
        self._outputs: dict[str, LockOutput] = {}
        self._inputs: dict[str, dict[str, InputSwitch]] = {}
        try:
            for c in compartments:
                self._outputs[c.id] = LockOutput(c.solenoid_pin, pin_factory,
                                                 hold=c.lock == "maglock")
                self._inputs[c.id] = {name: InputSwitch(pin, pin_factory, f"{name} input")
                                      for name, pin in c.inputs().items()}
        except BaseException:
            self._close_now()
            raise

    @property
    def link_up(self) -> bool:
        return True  # the pins are ours; nothing to lose

    async def start(self, loop: asyncio.AbstractEventLoop, on_input: InputCallback,
                    on_link: LinkCallback) -> None:
        for cid, switches in self._inputs.items():
            for name, switch in switches.items():
                switch.on_change(loop, functools.partial(on_input, cid, name))

    def check(self, compartment: str) -> str | None:
        return None  # gpiozero refused unusable pins when the devices were made

    def read(self, compartment: str) -> dict[str, bool]:
        return {name: switch.level for name, switch in self._inputs[compartment].items()}

    async def hold(self, compartment: str) -> None:
        self._outputs[compartment].engage()

    async def pulse(self, compartment: str, seconds: float,
                    started: StartedCallback | None = None) -> float:
        done = self._outputs[compartment].pulse(seconds, asyncio.get_running_loop())
        if started is not None:
            started(seconds)  # energised (or released) when pulse() returned
        await done
        return seconds

    def energised(self, compartment: str) -> bool:
        """The output's level now (for tests and the live view)."""
        return self._outputs[compartment].is_energised

    async def close(self) -> None:
        self._close_now()

    def _close_now(self) -> None:
        for output in self._outputs.values():
            output.close()
        for switches in self._inputs.values():
            for switch in switches.values():
                switch.close()
