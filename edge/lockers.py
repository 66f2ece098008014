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
from edge.config import MAX_PULSE_MS, CompartmentConfig
from edge.locker_backend import LockerBackend, LockFault, UnlockFailed

log = logging.getLogger(__name__)

EmitCallback = Callable[[Emit], None]
FEEDBACK_GRACE_S = 0.1  # a strike's latch monitor may lag its coil by this much


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
        self._operating: float | None = None  # when the lock being operated started
        self._compartments = {c.id: self._build(c) for c in configs}

    def _build(self, config: CompartmentConfig) -> _Compartment:
        # A microcontroller debounces its inputs and may replay a burst of queued changes
        # after a link loss: debouncing them again by arrival time would lose some.
        debounce_s = 0.0 if self.backend.debounces else config.debounce_ms / 1000
        timers = Timers(relock_s=config.relock_s, ajar_s=config.ajar_s,
                        held_open_s=config.held_open_s, relock_check_s=config.relock_check_s,
                        debounce_s=debounce_s)
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
            problem = self.backend.check(cid)
            if problem is not None:  # wired to what the hardware does not have
                report[cid]["state"] = "fault"
                self._dispatch(c, c.machine.fault(now, problem))
            self._schedule(c)
        for c in self._compartments.values():
            if c.config.lock == "maglock" and c.machine.state is not State.FAULT:
                await self._hold(c)
        return report

    async def _hold(self, c: _Compartment) -> None:
        try:
            async with self._coil:  # never in the middle of this compartment's release
                await self.backend.hold(c.config.id)
        except LockFault as exc:
            if self._loop is not None:
                self._dispatch(c, c.machine.fault(self._loop.time(), str(exc)))

    # -- grants -----------------------------------------------------------------------

    def set_pulse(self, compartment_id: str, pulse_s: float) -> None:
        """A new pulse length for the next unlocks (from a remote configuration change)."""
        c = self._compartments[compartment_id]
        c.config = c.config.model_copy(update={"pulse_ms": round(pulse_s * 1000)})

    async def unlock(self, compartment_id: str, by: dict[str, Any] | None = None) -> int:
        """Operate the compartment's lock for its grant; return the pulse in ms.

        Waits for any other coil to finish first (the grant takes effect only then: a
        door opened while waiting is forced), and returns once this pulse has ended.
        Raises :class:`UnlockFailed` (after emitting ``locker.unlock_failed``) if the lock
        was not operated: duty budget spent, hardware unreachable or refusing, or lock
        feedback that never reported unlocked.
        """
        c = self._compartments[compartment_id]
        loop = asyncio.get_running_loop()
        async with self._coil:
            started = loop.time()
            self._operating = started
            self._dispatch(c, c.machine.grant(started, by or {}))
            try:
                actual = await self._operate(c, started)
            except UnlockFailed as exc:
                log.warning("unlock of %s failed: %s", compartment_id, exc)
                self._dispatch(c, c.machine.unlock_failed(loop.time(), str(exc)))
                raise
            finally:
                self._operating = None
        self._dispatch(c, c.machine.tick(loop.time()))
        if c.machine.has_feedback:  # decided now that the feedback has had its chance
            emits = c.machine.unlocked(loop.time(), round(actual * 1000))
            self._dispatch(c, emits)
            if any(e.type == "locker.unlock_failed" for e in emits):
                raise UnlockFailed("the lock did not report unlocked")
        return round(actual * 1000)

    async def _operate(self, c: _Compartment, started: float) -> float:
        """Budget, then the backend's pulse (one coil: the caller holds the coil lock);
        without lock feedback the unlock is reported as soon as the lock is operated."""
        loop = asyncio.get_running_loop()
        strike = c.config.lock == "strike"
        if c.machine.state is State.FAULT or not self.backend.link_up:
            raise UnlockFailed("the compartment's hardware is unreachable")
        if strike and not c.budget.allows(started, c.pulse_s):
            raise UnlockFailed(
                f"duty budget: the coil was on {c.budget.used(started):.1f}s of its "
                f"{c.config.duty_budget_s:g}s per {c.config.duty_window_s:g}s")

        def operated(seconds: float) -> None:
            if not c.machine.has_feedback:
                self._dispatch(c, c.machine.unlocked(loop.time(), round(seconds * 1000)))

        try:
            actual = await self.backend.pulse(c.config.id, c.pulse_s, operated)
        except UnlockFailed as exc:
            if strike and exc.maybe_operated:
                c.budget.record(started, c.pulse_s)
            raise
        except LockFault as exc:  # operated, but not back at rest: the door was released
            self._dispatch(c, c.machine.fault(loop.time(), str(exc)))
            return c.pulse_s
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a backend bug must not leave the machine unlocking
            log.exception("the %s backend failed to pulse %s", self.backend.name, c.config.id)
            raise UnlockFailed(f"backend error: {exc}") from exc
        if strike:
            c.budget.record(started, actual)
        if c.machine.has_feedback:  # let a feedback edge at the pulse's end settle
            await asyncio.sleep(c.machine.timers.debounce_s + FEEDBACK_GRACE_S)
        return actual

    def stuck(self) -> str | None:
        """Why the bank is not working, if it is not: an unlock that has lasted far
        longer than any pulse may (the coil lock never released). For the watchdog."""
        if self._operating is not None and self._loop is not None:
            busy = self._loop.time() - self._operating
            if busy > MAX_PULSE_MS / 1000 + 10:
                return f"an unlock has been in progress for {busy:.0f}s"
        return None

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
        for task in list(self._tasks):
            task.cancel()
        await self.backend.close()

    # -- inputs, link and time --------------------------------------------------------

    def _on_input(self, compartment: str, name: str, level: bool) -> None:
        c = self._compartments.get(compartment)
        if c is None or self._loop is None:
            return
        self._dispatch(c, c.machine.raw(self._loop.time(), name, level))

    def _on_link(self, up: bool, detail: str) -> None:
        if self._loop is None:
            return
        now = self._loop.time()
        for cid, c in self._compartments.items():
            if not up:
                self._dispatch(c, c.machine.fault(now, f"hardware link down: {detail}"))
                continue
            if c.machine.state is not State.FAULT:
                continue  # a link-up it never lost (the first HELLO): nothing to recover
            levels = self.backend.read(cid)
            self._dispatch(c, c.machine.recovered(
                now, door_closed=levels["door"], locked=levels.get("feedback"),
                item_present=levels.get("item")))
            problem = self.backend.check(cid)
            if problem is not None:
                self._dispatch(c, c.machine.fault(now, problem))
            elif c.config.lock == "maglock":  # the microcontroller may have rebooted
                task = self._loop.create_task(self._hold(c))
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
