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


class UnlockFailed(Exception):
    """The lock was not operated: refused, or never acknowledged by the hardware."""


class LockerBackend(Protocol):
    """Outputs and inputs of every compartment of one locker bank."""

    name: str

    async def start(self, loop: asyncio.AbstractEventLoop, on_input: InputCallback,
                    on_link: LinkCallback) -> None:
        """Open the hardware with every output in its safe state and start reporting.

        Returns once the inputs can be read. Never energises a strike.
        """
        ...

    def read(self, compartment: str) -> dict[str, bool]:
        """The compartment's input levels now, by name (``door``, ``feedback``, ``item``)."""
        ...

    @property
    def link_up(self) -> bool:
        """False while the hardware cannot be reached (a bridge with its link down)."""
        ...

    async def hold(self, compartment: str) -> None:
        """Energise a maglock's hold (fail-safe compartments, after start-up)."""
        ...

    async def pulse(self, compartment: str, seconds: float) -> float:
        """Operate the lock for ``seconds`` (a strike energised, a maglock released);
        return the actual time, once it is over. The length is capped by a timer that
        does not depend on the event loop. Raise :class:`UnlockFailed` if it did not
        happen."""
        ...

    async def close(self) -> None:
        """Every output off (strikes locked, maglocks released) and the hardware released."""
        ...
