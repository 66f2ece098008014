"""What a locker backend is: the one interface over GPIO and the firmware bridge.

A backend owns the outputs (one per compartment lock) and the inputs (door, and lock
feedback and item presence where wired) of every compartment, and nothing else: the
state machine, the duty budget and the one-coil-at-a-time rule live above it, in
:class:`edge.lockers.LockerBank`, the same for every backend. The contract tests
(tests/test_locker_contract.py) run over each implementation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

# (compartment, input name, level) on the event loop: door True = closed, feedback
# True = locked, item True = present.
InputCallback = Callable[[str, str, bool], None]
# (up, detail) on the event loop, when the backend loses or regains its hardware.
LinkCallback = Callable[[bool, str], None]
# Called once the lock has been operated, with the time it will stay so (seconds).
StartedCallback = Callable[[float], None]


class UnlockFailed(Exception):
    """The lock was not operated: refused, or never acknowledged by the hardware.

    ``maybe_operated``: the hardware may have operated it all the same (a command whose
    acknowledgement was lost): the duty budget counts it, the member is told it failed.
    """

    def __init__(self, message: str, *, maybe_operated: bool = False) -> None:
        super().__init__(message)
        self.maybe_operated = maybe_operated


class LockFault(Exception):
    """The lock was operated but could not be returned to rest (a maglock that did not
    re-engage), or could not be engaged at all: the compartment is in fault."""


class LockerBackend(Protocol):
    """Outputs and inputs of every compartment of one locker bank."""

    name: str
    debounces: bool  # True if the hardware debounces inputs itself (a microcontroller)

    async def start(self, loop: asyncio.AbstractEventLoop, on_input: InputCallback,
                    on_link: LinkCallback) -> None:
        """Open the hardware with every output in its safe state and start reporting.

        Returns once the inputs can be read. Never energises a strike.
        """
        ...

    def check(self, compartment: str) -> str | None:
        """Why the compartment cannot work on this hardware (an output or input the
        microcontroller does not have), or None."""
        ...

    def read(self, compartment: str) -> dict[str, bool]:
        """The compartment's input levels now, by name (``door``, ``feedback``, ``item``)."""
        ...

    @property
    def link_up(self) -> bool:
        """False while the hardware cannot be reached (a bridge with its link down)."""
        ...

    async def hold(self, compartment: str) -> None:
        """Energise a maglock's hold (fail-safe compartments, after start-up); raise
        :class:`LockFault` if it did not engage."""
        ...

    async def pulse(self, compartment: str, seconds: float,
                    started: StartedCallback | None = None) -> float:
        """Operate the lock for ``seconds`` (a strike energised, a maglock released);
        call ``started`` once it is operated; return the actual time, once it is over.
        The length is capped by a timer that does not depend on the event loop. Raise
        :class:`UnlockFailed` if it did not happen, :class:`LockFault` if it happened
        but the lock could not be returned to rest."""
        ...

    async def close(self) -> None:
        """Every output off (strikes locked, maglocks released) and the hardware released."""
        ...
