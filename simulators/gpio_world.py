"""A locker bank's physical world on gpiozero MockFactory pins.

Door switches are reed contacts to ground: a closed door holds its line low whatever the
pull-up says, an open door lets the pull-up take it high. Solenoid outputs are watched:
when one is energised, a virtual member (if one is waiting, which by default one always
is) opens that door shortly after and closes it again later. Everything that happens is
recorded in :attr:`LockerWorld.history`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpiozero.pins.mock import MockFactory, MockPin

Listener = Callable[["WorldPin", bool], None]


class WorldPin(MockPin):  # type: ignore[misc]  # gpiozero is untyped
    """A MockPin that reports output changes and can be held low by a closed contact."""

    def __init__(self, factory: Any, info: Any) -> None:
        self.listeners: list[Listener] = []
        self.held_low = False  # a closed reed switch shorts the line to ground
        super().__init__(factory, info)

    def _change_state(self, value: bool) -> bool:
        if self.held_low and value:
            return False
        changed = bool(super()._change_state(value))
        if changed and self._function == "output":
            for listener in list(self.listeners):
                listener(self, value)
        return changed


def world_pin_factory() -> Any:
    """A MockFactory whose pins are :class:`WorldPin`."""
    return MockFactory(pin_class=WorldPin)


@dataclass(frozen=True)
class DoorSpec:
    """Where one compartment's solenoid and door switch are wired."""

    compartment: str
    solenoid_pin: int | str
    door_pin: int | str
    item_pin: int | str | None = None  # closed (low) while the item is in


@dataclass
class Member:
    """How the virtual member behaves after a door unlocks."""

    open_after_s: float = 0.2
    close_after_s: float | None = 1.0  # None: walks away with the door open


class Doors(Protocol):
    def open_door(self, compartment: str) -> None: ...
    def close_door(self, compartment: str) -> None: ...


async def member_uses(doors: Doors, compartment: str, member: Member) -> None:
    """What a member does once the lock releases: open the door, and close it again (or
    walk away, when ``close_after_s`` is None)."""
    await asyncio.sleep(member.open_after_s)
    doors.open_door(compartment)
    if member.close_after_s is not None:
        await asyncio.sleep(member.close_after_s)
        doors.close_door(compartment)


@dataclass
class LockerWorld:
    """Door physics for a bank of compartments."""

    factory: Any
    doors: Iterable[DoorSpec]
    loop: asyncio.AbstractEventLoop
    member: Member | None = field(default_factory=Member)
    history: list[tuple[float, str, str]] = field(default_factory=list)
    on_change: Callable[[str, str], None] | None = None

    def __post_init__(self) -> None:
        self._specs = {d.compartment: d for d in self.doors}
        self._tasks: set[asyncio.Task[None]] = set()
        # How the member behaves at a compartment's next unlock only (None: nobody comes).
        self.once: dict[str, Member | None] = {}
        for spec in self._specs.values():
            self._pin(spec.door_pin).held_low = True  # every door starts closed
            if spec.item_pin is not None:
                self._pin(spec.item_pin).held_low = True  # every item starts in
            self._pin(spec.solenoid_pin).listeners.append(
                functools.partial(self._coil, spec.compartment)
            )

    def _pin(self, name: int | str) -> WorldPin:
        pin = self.factory.pin(name)
        assert isinstance(pin, WorldPin)
        return pin

    def _note(self, compartment: str, what: str) -> None:
        self.history.append((time.monotonic(), compartment, what))
        if self.on_change is not None:
            self.on_change(compartment, what)

    def _coil(self, compartment: str, _pin: WorldPin, energised: bool) -> None:
        # Called on whichever thread drove the pin (the agent's pulse timer, say).
        with contextlib.suppress(RuntimeError):  # loop closed: the world has ended
            self.loop.call_soon_threadsafe(self._on_coil, compartment, energised)

    def _on_coil(self, compartment: str, energised: bool) -> None:
        self._note(compartment, "energised" if energised else "released")
        member = self.once.pop(compartment, self.member) if energised else None
        if member is not None:
            task = self.loop.create_task(self._member_uses(compartment, member))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _member_uses(self, compartment: str, member: Member) -> None:
        await member_uses(self, compartment, member)

    def is_closed(self, compartment: str) -> bool:
        return self._pin(self._specs[compartment].door_pin).held_low

    def open_door(self, compartment: str) -> None:
        """Open the door: the contact opens and the pull-up takes the line high."""
        pin = self._pin(self._specs[compartment].door_pin)
        pin.held_low = False
        if pin.function == "input" and pin.pull == "up":
            pin.drive_high()
        self._note(compartment, "opened")

    def close_door(self, compartment: str) -> None:
        """Close the door: the contact shorts the line low."""
        pin = self._pin(self._specs[compartment].door_pin)
        pin.held_low = False
        if pin.function == "input":
            pin.drive_low()
        pin.held_low = True
        self._note(compartment, "closed")

    def set_item(self, compartment: str, present: bool) -> None:
        """Put the item in (its switch closes: low) or take it out (the pull-up: high)."""
        item = self._specs[compartment].item_pin
        if item is None:
            raise KeyError(f"{compartment} has no item switch (item_pin)")
        pin = self._pin(item)
        pin.held_low = False
        if present:
            if pin.function == "input":
                pin.drive_low()
            pin.held_low = True
        elif pin.function == "input" and pin.pull == "up":
            pin.drive_high()
        self._note(compartment, "item returned" if present else "item taken")

    async def aclose(self) -> None:
        """Cancel members still busy with a door."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            # gather, not suppress(CancelledError): a cancellation of this task that
            # arrives meanwhile must not be swallowed with the child's
            await asyncio.gather(task, return_exceptions=True)
