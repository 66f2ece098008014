"""The locker bank: a state machine per compartment over one backend (GPIO or bridge).

Hardware safety lives here, the same for every backend: a grant is one pulse of the
compartment's configured length (capped by configuration, and ended by a timer that does
not depend on the event loop: a thread for GPIO, the microcontroller for the bridge);
each coil has a duty budget over a rolling window; one coil is operated at a time across
the bank (grants queue on a lock); strikes are never energised at start and every output
goes to its safe state on close. At start the inputs are read and every machine
reconciled before any alarm can be raised (:meth:`LockerBank.start` returns the
``boot_state``).

Events come out of the machines as :class:`~edge.compartment.Emit` and are handed to
``emit`` on the event loop, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.coil import DutyBudget
from edge.compartment import CompartmentMachine, Emit, State, Timers
from edge.config import CompartmentConfig
from edge.locker_backend import LockerBackend, UnlockFailed

log = logging.getLogger(__name__)

EmitCallback = Callable[[Emit], None]


@dataclass
class _Compartment:
    config: CompartmentConfig
    machine: CompartmentMachine
    budget: DutyBudget
    timer: asyncio.TimerHandle | None = None

    @property
    def pulse_s(self) -> float:
        return self.config.pulse_ms / 1000


class LockerBank:
    """All compartments of the site on one backend."""

    def __init__(self, configs: tuple[CompartmentConfig, ...], backend: LockerBackend,
                 emit: EmitCallback) -> None:
        self.backend = backend
        self._emit = emit
        self._coil = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._compartments = {c.id: self._build(c) for c in configs}

    @staticmethod
    def _build(config: CompartmentConfig) -> _Compartment:
        timers = Timers(relock_s=config.relock_s, ajar_s=config.ajar_s,
                        held_open_s=config.held_open_s, debounce_s=config.debounce_ms / 1000)
        machine = CompartmentMachine(config.id, timers,
                                     has_feedback=config.feedback_pin is not None,
                                     has_item=config.item_pin is not None)
        budget = DutyBudget(budget_s=config.duty_budget_s, window_s=config.duty_window_s)
        return _Compartment(config, machine, budget)

    async def start(self) -> dict[str, Any]:
        """Open the backend, read every input, reconcile, engage maglocks; the boot state."""
        self._loop = asyncio.get_running_loop()
        await self.backend.start(self._loop, self._on_input, self._on_link)
        report: dict[str, Any] = {}
        now = self._loop.time()
        for cid, c in self._compartments.items():
            if not self.backend.link_up:
                report[cid] = {"state": "fault"}
                self._dispatch(c, c.machine.fault(now, "no link to the hardware at start"))
                continue
            levels = self.backend.read(cid)
            report[cid] = c.machine.boot(now, door_closed=levels["door"],
                                         locked=levels.get("feedback"),
                                         item_present=levels.get("item"))
            self._schedule(c)
        for cid, c in self._compartments.items():
            if c.config.lock == "maglock" and self.backend.link_up:
                await self.backend.hold(cid)
        return report

    # -- grants -----------------------------------------------------------------------

    def set_pulse(self, compartment_id: str, pulse_s: float) -> None:
        """A new pulse length for the next unlocks (from a remote configuration change)."""
        c = self._compartments[compartment_id]
        c.config = c.config.model_copy(update={"pulse_ms": round(pulse_s * 1000)})

    async def unlock(self, compartment_id: str, by: dict[str, Any] | None = None) -> int:
        """Operate the compartment's lock for its grant; return the pulse in ms.

        Waits for any other coil to finish first, and returns once this pulse has ended.
        Raises :class:`UnlockFailed` (after emitting ``locker.unlock_failed``) if the
        lock was not operated: duty budget spent, hardware unreachable, or refused.
        """
        c = self._compartments[compartment_id]
        loop = asyncio.get_running_loop()
        self._dispatch(c, c.machine.grant(loop.time(), by or {}))
        async with self._coil:
            started = loop.time()
            try:
                if c.machine.state is State.FAULT or not self.backend.link_up:
                    raise UnlockFailed("the compartment's hardware is unreachable")
                if c.config.lock == "strike" and not c.budget.allows(started, c.pulse_s):
                    raise UnlockFailed(
                        f"duty budget: the coil was on {c.budget.used(started):.1f}s of its "
                        f"{c.config.duty_budget_s:g}s per {c.config.duty_window_s:g}s")
                actual = await self.backend.pulse(compartment_id, c.pulse_s)
            except UnlockFailed as exc:
                log.warning("unlock of %s failed: %s", compartment_id, exc)
                self._dispatch(c, c.machine.unlock_failed(loop.time(), str(exc)))
                raise
            if c.config.lock == "strike":
                c.budget.record(started, actual)
        pulse_ms = round(actual * 1000)
        self._dispatch(c, c.machine.tick(loop.time()) + c.machine.unlocked(loop.time(),
                                                                           pulse_ms))
        return pulse_ms

    # -- what the bank knows ----------------------------------------------------------

    def states(self) -> dict[str, str]:
        """``{compartment: state}`` of every machine."""
        return {cid: c.machine.state.value for cid, c in self._compartments.items()}

    def door_states(self) -> dict[str, bool]:
        """``{compartment: is_closed}`` as the machines have accepted them."""
        return {cid: c.machine.level("door") is not False
                for cid, c in self._compartments.items()}

    async def close(self) -> None:
        """Cancel the timers; every output to its safe state."""
        for c in self._compartments.values():
            if c.timer is not None:
                c.timer.cancel()
        await self.backend.close()

    # -- inputs, link and time --------------------------------------------------------

    def _on_input(self, compartment: str, name: str, level: bool) -> None:
        c = self._compartments.get(compartment)
        if c is None or self._loop is None:
            return
        c.machine.raw(self._loop.time(), name, level)
        self._schedule(c)

    def _on_link(self, up: bool, detail: str) -> None:
        if self._loop is None:
            return
        now = self._loop.time()
        for cid, c in self._compartments.items():
            if up:
                levels = self.backend.read(cid)
                self._dispatch(c, c.machine.recovered(now, door_closed=levels["door"]))
            else:
                self._dispatch(c, c.machine.fault(now, f"hardware link down: {detail}"))
        if up:
            for cid, c in self._compartments.items():
                if c.config.lock == "maglock":
                    task = self._loop.create_task(self.backend.hold(cid))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    def _tick(self, c: _Compartment) -> None:
        c.timer = None
        if self._loop is not None:
            self._dispatch(c, c.machine.tick(self._loop.time()))

    def _dispatch(self, c: _Compartment, emits: list[Emit]) -> None:
        for emit in emits:
            self._emit(emit)
        self._schedule(c)

    def _schedule(self, c: _Compartment) -> None:
        if self._loop is None:
            return
        deadline = c.machine.next_deadline()
        if c.timer is not None and (deadline is None or c.timer.when() != deadline):
            c.timer.cancel()
            c.timer = None
        if deadline is not None and c.timer is None:
            c.timer = self._loop.call_at(deadline, self._tick, c)
