"""The door state machine of one compartment: sans-I/O, driven by inputs and a clock.

The machine knows nothing of GPIO, serial lines or asyncio. Its driver
(:class:`edge.lockers.LockerBank`) feeds it raw input levels, grants and unlock results
with a monotonic time, calls :meth:`CompartmentMachine.tick` at
:meth:`~CompartmentMachine.next_deadline`, and records the :class:`Emit` it returns.

States and what moves them (docs/lockers.md has the full table)::

    LOCKED --grant--> UNLOCKING --pulse acknowledged--> UNLOCKED --door opens--> OPEN
    UNLOCKED --relock_s, never opened--> LOCKED            (locker.relocked_not_opened)
    OPEN --ajar_s--> AJAR --held_open_s--> HELD_OPEN       (door.ajar, door.held_open alarm)
    OPEN/AJAR/HELD_OPEN/FORCED --door closes--> RELOCKING --> LOCKED (feedback confirms)
    LOCKED --door opens, no grant--> FORCED                (door.forced_open alarm)
    UNLOCKING --pulse refused or not acknowledged--> UNLOCK_FAILED (locker.unlock_failed)
    any --backend fault--> FAULT --recovered--> LOCKED or AJAR (locker.fault, locker.recovered)

Door, lock-feedback and item inputs are debounced here: a level counts once it has held
for ``debounce_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class State(StrEnum):
    LOCKED = "locked"
    UNLOCKING = "unlocking"
    UNLOCKED = "unlocked"
    OPEN = "open"
    AJAR = "ajar"
    HELD_OPEN = "held_open"
    RELOCKING = "relocking"
    FORCED = "forced"
    UNLOCK_FAILED = "unlock_failed"
    FAULT = "fault"


# States in which the door is open, and in which a grant lets it open.
DOOR_OPEN = frozenset({State.OPEN, State.AJAR, State.HELD_OPEN, State.FORCED})
GRANTED = frozenset({State.UNLOCKING, State.UNLOCKED})
CLOSED_AT_REST = frozenset({State.LOCKED, State.UNLOCK_FAILED})


@dataclass(frozen=True)
class Timers:
    """The compartment's timers, seconds."""

    relock_s: float = 10.0  # unlocked but never opened: count it relocked
    ajar_s: float = 30.0  # open this long: door.ajar
    held_open_s: float = 120.0  # open this long: door.held_open (alarm)
    relock_check_s: float = 2.0  # with lock feedback: closed, but not locked by then: fault
    debounce_s: float = 0.05


@dataclass(frozen=True)
class Emit:
    """An event the machine asks its driver to record."""

    type: str
    fields: dict[str, Any]
    alarm: bool = False
    audit: bool = False


@dataclass
class _Debounced:
    """One input: its accepted level, and a pending raw level with the time it changed."""

    level: bool | None
    pending: bool | None = None
    since: float = 0.0


@dataclass
class CompartmentMachine:
    """One compartment's state; every method returns the events the transition makes."""

    compartment: str
    timers: Timers = field(default_factory=Timers)
    has_feedback: bool = False
    has_item: bool = False
    state: State = State.LOCKED
    grant_by: dict[str, Any] | None = None
    _inputs: dict[str, _Debounced] = field(default_factory=dict)
    _deadlines: dict[str, float] = field(default_factory=dict)
    _opened_at: float | None = None
    _saw_unlocked: bool = False

    # -- start-up ---------------------------------------------------------------------

    def boot(self, now: float, *, door_closed: bool, locked: bool | None = None,
             item_present: bool | None = None) -> dict[str, Any]:
        """Reconcile with the inputs read at start; no alarm. Returns the boot state."""
        self._inputs = {"door": _Debounced(door_closed), "feedback": _Debounced(locked),
                        "item": _Debounced(item_present)}
        if door_closed:
            self.state = State.LOCKED
        else:  # open at start: not forced (we do not know), but it is watched from now
            self._enter_open(now, State.OPEN)
        report: dict[str, Any] = {"door": "closed" if door_closed else "open",
                                  "state": self.state.value}
        if locked is not None:
            report["lock"] = "locked" if locked else "unlocked"
        if item_present is not None:
            report["item"] = "present" if item_present else "absent"
        return report

    # -- grants -----------------------------------------------------------------------

    def grant(self, now: float, by: dict[str, Any]) -> list[Emit]:
        """A recorded grant is about to pulse the lock; ``by`` names who asked."""
        self.grant_by = dict(by)  # named in the unlock_failed event too
        self._saw_unlocked = False
        if self.state is State.FAULT:
            return []  # nothing can be unlocked: the unlock will fail and say so
        if self.state in DOOR_OPEN:
            return []  # already open: nothing to unlock, the grant covers this opening
        self.state = State.UNLOCKING
        self._deadlines.pop("relock", None)
        return []

    def unlocked(self, now: float, pulse_ms: int) -> list[Emit]:
        """The backend confirmed the pulse (GPIO: it ended; bridge: the MCU acknowledged)."""
        if self.has_feedback and not self._saw_unlocked and self.state is State.UNLOCKING:
            return self.unlock_failed(now, "the lock did not report unlocked")
        emits = [Emit("locker.unlocked", self._with_grant({"pulse_ms": pulse_ms}))]
        if self.state is State.UNLOCKING:
            self.state = State.UNLOCKED
            self._deadlines["relock"] = now + self.timers.relock_s
        return emits

    def unlock_failed(self, now: float, reason: str) -> list[Emit]:
        """The pulse was refused or not acknowledged: the member is still locked out."""
        emit = Emit("locker.unlock_failed", self._with_grant({"reason": reason}), alarm=True)
        if self.state in GRANTED:
            self.state = State.UNLOCK_FAILED
        self.grant_by = None
        return [emit]

    # -- inputs -----------------------------------------------------------------------

    def raw(self, now: float, name: str, level: bool) -> list[Emit]:
        """A raw level on ``door`` (closed), ``feedback`` (locked) or ``item`` (present);
        it counts once it has held for the debounce time (see :meth:`tick`), or at once
        when the debounce time is 0 (inputs already debounced by a microcontroller)."""
        debounced = self._inputs.setdefault(name, _Debounced(None))
        if level == debounced.level:
            debounced.pending = None  # a bounce back: nothing changed
            self._deadlines.pop(f"debounce:{name}", None)
            return []
        if self.timers.debounce_s <= 0:
            debounced.pending = level
            return self._settle(now, name)
        if debounced.pending != level:
            debounced.pending, debounced.since = level, now
            self._deadlines[f"debounce:{name}"] = now + self.timers.debounce_s
        return []

    def level(self, name: str) -> bool | None:
        """The accepted (debounced) level of an input; None if unknown."""
        debounced = self._inputs.get(name)
        return None if debounced is None else debounced.level

    def _door(self, now: float, closed: bool) -> list[Emit]:
        if not closed and self.state is State.FAULT:  # no grant can be active in a fault
            self._enter_open(now, State.FORCED)
            return [Emit("door.forced_open", {"compartment": self.compartment}, alarm=True)]
        if self.state is State.FAULT:
            return []
        if not closed:
            return self._door_opened(now)
        if self.state in DOOR_OPEN:
            open_s = round(now - (self._opened_at or now), 1)
            self._deadlines.pop("ajar", None)
            self._deadlines.pop("held_open", None)
            emits = [Emit("door.closed", {"compartment": self.compartment, "open_s": open_s})]
            self.grant_by = None
            if self.has_feedback and self.level("feedback") is not True:
                self.state = State.RELOCKING
                self._deadlines["relock_check"] = now + self.timers.relock_check_s
            else:
                self.state = State.LOCKED
            return emits
        return []

    def _door_opened(self, now: float) -> list[Emit]:
        if self.state in GRANTED:
            self._deadlines.pop("relock", None)
            emits = [Emit("door.opened", self._with_grant({}))]
            self._enter_open(now, State.OPEN)
            return emits
        if self.state in (*CLOSED_AT_REST, State.RELOCKING):
            self._deadlines.pop("relock_check", None)
            self._enter_open(now, State.FORCED)
            return [Emit("door.forced_open", {"compartment": self.compartment}, alarm=True)]
        return []

    def _feedback(self, now: float, locked: bool) -> list[Emit]:
        if not locked and self.state in GRANTED:
            self._saw_unlocked = True
            return []
        if locked and self.state is State.RELOCKING:
            self._deadlines.pop("relock_check", None)
            self.state = State.LOCKED
            return [Emit("locker.locked", {"compartment": self.compartment})]
        if not locked and self.state in CLOSED_AT_REST:
            return self.fault(now, "the lock reports unlocked with no pulse")
        if locked and self.state is State.FAULT and self.level("door") is True:
            self.state = State.LOCKED  # the lock has caught up: closed and locked again
            return [Emit("locker.recovered", {"compartment": self.compartment,
                                              "door": "closed"})]
        return []

    def _item(self, now: float, present: bool) -> list[Emit]:
        fields = self._with_grant({})
        if self.grant_by is None:
            fields["forced"] = self.state is State.FORCED
        return [Emit("item.returned" if present else "item.checked_out", fields, audit=True)]

    # -- faults -----------------------------------------------------------------------

    def fault(self, now: float, reason: str) -> list[Emit]:
        """The backend lost this compartment (bridge link down, lock out of step)."""
        if self.state is State.FAULT:
            return []
        self.state = State.FAULT
        self.grant_by = None
        for name in ("relock", "ajar", "held_open", "relock_check"):
            self._deadlines.pop(name, None)
        return [Emit("locker.fault", {"compartment": self.compartment, "reason": reason},
                     alarm=True)]

    def recovered(self, now: float, *, door_closed: bool, locked: bool | None = None,
                  item_present: bool | None = None) -> list[Emit]:
        """The backend is back; every input is read again. A door that was closed when the
        fault began and is open now was opened with no grant possible: forced."""
        if self.state is not State.FAULT:
            return []
        was_closed = self.level("door")
        self._inputs = {"door": _Debounced(door_closed), "feedback": _Debounced(locked),
                        "item": _Debounced(item_present)}
        emits = [Emit("locker.recovered", {"compartment": self.compartment,
                                           "door": "closed" if door_closed else "open"})]
        if door_closed:
            self.state = State.LOCKED
        elif was_closed:
            self._enter_open(now, State.FORCED)
            emits.append(Emit("door.forced_open", {"compartment": self.compartment},
                              alarm=True))
        else:
            self._enter_open(now, State.AJAR)
        return emits

    # -- time -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do."""
        return min(self._deadlines.values(), default=None)

    def tick(self, now: float) -> list[Emit]:
        """Run every timer due at ``now``, oldest first."""
        emits: list[Emit] = []
        while True:
            due = [(at, name) for name, at in self._deadlines.items() if at <= now]
            if not due:
                return emits
            at, name = min(due)
            del self._deadlines[name]
            emits += self._fire(at, name)

    def _fire(self, at: float, name: str) -> list[Emit]:
        if name.startswith("debounce:"):
            return self._settle(at, name.partition(":")[2])
        cid = self.compartment
        open_s = round(at - (self._opened_at or at), 1)
        if name == "relock" and self.state is State.UNLOCKED:
            self.state = State.LOCKED
            emit = Emit("locker.relocked_not_opened", self._with_grant({}))
            self.grant_by = None
            return [emit]
        if name == "ajar" and self.state in (State.OPEN, State.FORCED):
            self.state = State.AJAR
            return [Emit("door.ajar", {"compartment": cid, "open_s": open_s})]
        if name == "held_open" and self.state in DOOR_OPEN:
            self.state = State.HELD_OPEN
            return [Emit("door.held_open", {"compartment": cid, "open_s": open_s},
                         alarm=True)]
        if name == "relock_check" and self.state is State.RELOCKING:
            return self.fault(at, "the lock did not re-engage after the door closed")
        return []

    def _settle(self, at: float, name: str) -> list[Emit]:
        debounced = self._inputs[name]
        if debounced.pending is None:
            return []
        level, debounced.level, debounced.pending = debounced.pending, debounced.pending, None
        if name == "door":
            return self._door(at, level)
        if name == "feedback":
            return self._feedback(at, level)
        return self._item(at, level)

    # -- helpers ----------------------------------------------------------------------

    def _enter_open(self, now: float, state: State) -> None:
        self.state = state
        self._opened_at = now
        self._deadlines["ajar"] = now + self.timers.ajar_s
        self._deadlines["held_open"] = now + self.timers.held_open_s

    def _with_grant(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {"compartment": self.compartment, **fields, **(self.grant_by or {})}
