"""The locker bank: compartments with a solenoid and a door sensor each.

Hardware safety, as the skeleton implements it: every output starts off and is driven off
on close; a pulse is capped at ``MAX_PULSE_MS`` by configuration and ended by a thread, not
the event loop; one coil is energised at a time across the bank (grants queue on a lock).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.config import CompartmentConfig
from edge.gpio import DoorSensor, Solenoid

DoorCallback = Callable[[str, bool], None]  # (compartment id, is_closed)


@dataclass
class Compartment:
    """One compartment's hardware."""

    id: str
    pulse_s: float
    solenoid: Solenoid
    door: DoorSensor


class LockerBank:
    """All compartments of the site, built on one gpiozero pin factory."""

    def __init__(self, configs: tuple[CompartmentConfig, ...], pin_factory: Any) -> None:
        self._compartments: dict[str, Compartment] = {}
        self._coil = asyncio.Lock()
        try:
            for c in configs:
                self._compartments[c.id] = Compartment(
                    id=c.id,
                    pulse_s=c.pulse_ms / 1000,
                    solenoid=Solenoid(c.solenoid_pin, pin_factory),
                    door=DoorSensor(c.door_pin, pin_factory),
                )
        except BaseException:
            self.close()
            raise

    def door_states(self) -> dict[str, bool]:
        """``{compartment: is_closed}`` read from the sensors now."""
        return {cid: c.door.is_closed for cid, c in self._compartments.items()}

    def watch_doors(self, loop: asyncio.AbstractEventLoop, callback: DoorCallback) -> None:
        """Call ``callback(compartment, is_closed)`` on ``loop`` for every door change."""
        for cid, c in self._compartments.items():
            c.door.on_change(loop, functools.partial(callback, cid))

    async def unlock(self, compartment_id: str) -> float:
        """Pulse the compartment's solenoid; return the pulse length in seconds.

        Waits for any other coil to finish first, and returns once this pulse has ended.
        """
        compartment = self._compartments[compartment_id]
        async with self._coil:
            await compartment.solenoid.pulse(compartment.pulse_s, asyncio.get_running_loop())
        return compartment.pulse_s

    def set_pulse(self, compartment_id: str, pulse_s: float) -> None:
        """A new pulse length for the next unlocks (already capped by the configuration)."""
        self._compartments[compartment_id].pulse_s = pulse_s

    def close(self) -> None:
        """Drive every output off and release all pins."""
        for c in self._compartments.values():
            c.solenoid.close()
            c.door.close()
