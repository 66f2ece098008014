"""The door state machine, table-driven: every transition, with a fake clock."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.compartment import CompartmentMachine, State, Timers

TIMERS = Timers(relock_s=10, ajar_s=30, held_open_s=120, relock_check_s=2, debounce_s=0.05)
BY = {"member": "ada", "badge_id": "b-1"}

# A step: (time, action, argument). Actions: grant, unlocked, failed, door (True closed),
# feedback (True locked), item (True present), fault, recovered (door closed?), tick.
Step = tuple[float, str, object]


def run(steps: Sequence[Step], *, feedback: bool = False, item: bool = False,
        door_closed: bool = True) -> tuple[CompartmentMachine, list[str]]:
    machine = CompartmentMachine("A1", TIMERS, has_feedback=feedback, has_item=item)
    machine.boot(0.0, door_closed=door_closed, locked=True if feedback else None,
                 item_present=True if item else None)
    events: list[str] = []
    for at, action, arg in steps:
        events += [e.type for e in machine.tick(at)]
        if action == "grant":
            events += [e.type for e in machine.grant(at, BY)]
        elif action == "unlocked":
            events += [e.type for e in machine.unlocked(at, 500)]
        elif action == "failed":
            events += [e.type for e in machine.unlock_failed(at, str(arg))]
        elif action in ("door", "feedback", "item"):
            events += [e.type for e in machine.raw(at, action, bool(arg))]
            events += [e.type for e in machine.tick(at + TIMERS.debounce_s)]
        elif action == "fault":
            events += [e.type for e in machine.fault(at, "link down")]
        elif action == "recovered":
            events += [e.type for e in machine.recovered(at, door_closed=bool(arg))]
    return machine, events


ROWS: list[tuple[str, list[Step], dict[str, bool], list[str], State]] = [
    ("grant, open, close", [(1, "grant", None), (1.5, "unlocked", None), (3, "door", False),
                            (9, "door", True)], {},
     ["locker.unlocked", "door.opened", "door.closed"], State.LOCKED),
    ("unlocked, never opened", [(1, "grant", None), (1.5, "unlocked", None),
                                (12, "tick", None)], {},
     ["locker.unlocked", "locker.relocked_not_opened"], State.LOCKED),
    ("opened during the pulse", [(1, "grant", None), (1.2, "door", False),
                                 (1.5, "unlocked", None)], {},
     ["door.opened", "locker.unlocked"], State.OPEN),
    ("forced", [(5, "door", False)], {}, ["door.forced_open"], State.FORCED),
    ("forced then closed", [(5, "door", False), (6, "door", True)], {},
     ["door.forced_open", "door.closed"], State.LOCKED),
    ("opened after the relock", [(1, "grant", None), (1.5, "unlocked", None),
                                 (12, "tick", None), (13, "door", False)], {},
     ["locker.unlocked", "locker.relocked_not_opened", "door.forced_open"], State.FORCED),
    ("ajar", [(1, "grant", None), (1.5, "unlocked", None), (2, "door", False),
              (33, "tick", None)], {},
     ["locker.unlocked", "door.opened", "door.ajar"], State.AJAR),
    ("held open", [(1, "grant", None), (1.5, "unlocked", None), (2, "door", False),
                   (123, "tick", None), (130, "door", True)], {},
     ["locker.unlocked", "door.opened", "door.ajar", "door.held_open", "door.closed"],
     State.LOCKED),
    ("forced and held open", [(5, "door", False), (200, "tick", None)], {},
     ["door.forced_open", "door.ajar", "door.held_open"], State.HELD_OPEN),
    ("unlock failed", [(1, "grant", None), (1.1, "failed", "bridge down")], {},
     ["locker.unlock_failed"], State.UNLOCK_FAILED),
    ("opened after a failed unlock is forced", [(1, "grant", None), (1.1, "failed", "x"),
                                                 (2, "door", False)], {},
     ["locker.unlock_failed", "door.forced_open"], State.FORCED),
    ("feedback confirms unlock and relock",
     [(1, "grant", None), (1.1, "feedback", False), (1.5, "unlocked", None),
      (2, "door", False), (8, "door", True), (8.2, "feedback", True)], {"feedback": True},
     ["locker.unlocked", "door.opened", "door.closed", "locker.locked"], State.LOCKED),
    ("no feedback during the pulse: unlock failed",
     [(1, "grant", None), (1.5, "unlocked", None)], {"feedback": True},
     ["locker.unlock_failed"], State.UNLOCK_FAILED),
    ("lock never re-engages", [(1, "grant", None), (1.1, "feedback", False),
                               (1.5, "unlocked", None), (2, "door", False), (8, "door", True),
                               (11, "tick", None)], {"feedback": True},
     ["locker.unlocked", "door.opened", "door.closed", "locker.fault"], State.FAULT),
    ("lock opens with no pulse", [(3, "feedback", False)], {"feedback": True},
     ["locker.fault"], State.FAULT),
    ("tool checked out and returned",
     [(1, "grant", None), (1.5, "unlocked", None), (2, "door", False), (3, "item", False),
      (5, "door", True), (20, "grant", None), (20.5, "unlocked", None),
      (21, "door", False), (22, "item", True), (23, "door", True)], {"item": True},
     ["locker.unlocked", "door.opened", "item.checked_out", "door.closed", "locker.unlocked",
      "door.opened", "item.returned", "door.closed"], State.LOCKED),
    ("fault and recovery with the door closed", [(1, "fault", None), (3, "recovered", True)],
     {}, ["locker.fault", "locker.recovered"], State.LOCKED),
    ("opened during a fault: forced", [(1, "fault", None), (2, "door", False),
                                       (3, "door", True)], {},
     ["locker.fault", "door.forced_open", "door.closed"], State.LOCKED),
    ("found open at recovery, closed at the fault: forced",
     [(1, "fault", None), (3, "recovered", False)], {},
     ["locker.fault", "locker.recovered", "door.forced_open"], State.FORCED),
    ("found open at recovery, open at the fault too: ajar",
     [(1, "grant", None), (1.5, "unlocked", None), (2, "door", False), (3, "fault", None),
      (9, "recovered", False)], {},
     ["locker.unlocked", "door.opened", "locker.fault", "locker.recovered"], State.AJAR),
    ("the lock catches up after a relock fault",
     [(1, "grant", None), (1.1, "feedback", False), (1.5, "unlocked", None),
      (2, "door", False), (8, "door", True), (11, "tick", None), (12, "feedback", True)],
     {"feedback": True},
     ["locker.unlocked", "door.opened", "door.closed", "locker.fault", "locker.recovered"],
     State.LOCKED),
    ("a grant during a fault fails and stays in fault",
     [(1, "fault", None), (2, "grant", None), (2.1, "failed", "no link"),
      (3, "recovered", True)], {},
     ["locker.fault", "locker.unlock_failed", "locker.recovered"], State.LOCKED),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_transitions(row: tuple[str, list[Step], dict[str, bool], list[str], State]) -> None:
    _, steps, options, expected, final = row
    machine, events = run(steps, **options)
    assert events == expected
    assert machine.state is final


def test_boot_with_the_door_open_raises_no_alarm_but_watches_it() -> None:
    machine = CompartmentMachine("A1", TIMERS)
    report = machine.boot(0.0, door_closed=False)
    assert report == {"door": "open", "state": "open"}
    assert [e.type for e in machine.tick(125.0)] == ["door.ajar", "door.held_open"]


def test_events_carry_who_was_granted() -> None:
    machine = CompartmentMachine("A1", TIMERS)
    machine.boot(0.0, door_closed=True)
    machine.grant(1.0, BY)
    [unlocked] = machine.unlocked(1.5, 500)
    machine.raw(2.0, "door", False)
    [opened] = machine.tick(2.1)
    assert unlocked.fields == {"compartment": "A1", "pulse_ms": 500, **BY}
    assert opened.fields == {"compartment": "A1", **BY}
    machine.raw(3.0, "door", True)
    [closed] = machine.tick(3.1)
    assert closed.fields == {"compartment": "A1", "open_s": 1.0}


def test_debounce_ignores_chatter_shorter_than_the_debounce_time() -> None:
    machine = CompartmentMachine("A1", TIMERS)
    machine.boot(0.0, door_closed=True)
    for i in range(10):  # a switch chattering every 10 ms, ending closed
        machine.raw(1.0 + i * 0.01, "door", i % 2 == 1)
    assert machine.tick(2.0) == []
    assert machine.state is State.LOCKED


@given(st.lists(st.tuples(st.sampled_from(["grant", "unlocked", "failed", "door", "feedback",
                                           "item", "fault", "recovered", "tick"]),
                          st.booleans(), st.floats(0, 200)), max_size=40))
def test_no_sequence_of_inputs_breaks_the_machine(actions: list[tuple[str, bool, float]]) -> None:
    machine = CompartmentMachine("A1", TIMERS, has_feedback=True, has_item=True)
    machine.boot(0.0, door_closed=True, locked=True, item_present=True)
    now = 0.0
    for action, flag, gap in actions:
        now += gap
        machine.tick(now)
        if action == "grant":
            machine.grant(now, BY)
        elif action == "unlocked":
            machine.unlocked(now, 500)
        elif action == "failed":
            machine.unlock_failed(now, "x")
        elif action == "fault":
            machine.fault(now, "x")
        elif action == "recovered":
            machine.recovered(now, door_closed=flag)
        elif action != "tick":
            machine.raw(now, action, flag)  # emits nothing until the debounce settles
        assert machine.state in State
        deadline = machine.next_deadline()
        assert deadline is None or deadline >= now - 200
    if machine.state in (State.OPEN, State.AJAR, State.FORCED):
        assert machine.next_deadline() is not None  # an open door is always watched


def test_inputs_already_debounced_apply_at_once_and_none_is_lost() -> None:
    """A microcontroller replays queued changes back to back after a link loss."""
    machine = CompartmentMachine("A1", Timers(debounce_s=0))
    machine.boot(0.0, door_closed=True)
    events = machine.raw(1.0, "door", False) + machine.raw(1.0, "door", True)
    assert [e.type for e in events] == ["door.forced_open", "door.closed"]


def test_an_unlock_failed_during_a_fault_says_who_asked() -> None:
    machine = CompartmentMachine("A1", TIMERS)
    machine.boot(0.0, door_closed=True)
    machine.fault(1.0, "link down")
    machine.grant(2.0, BY)
    [failed] = machine.unlock_failed(2.1, "unreachable")
    assert failed.fields == {"compartment": "A1", "reason": "unreachable", **BY}
    assert machine.state is State.FAULT
