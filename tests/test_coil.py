"""The duty budget: on-time within any rolling window stays under the coil's rating."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.coil import DutyBudget


def test_pulses_are_refused_once_the_window_is_full_and_allowed_as_it_rolls() -> None:
    budget = DutyBudget(budget_s=1.5, window_s=10.0)
    for t in (0.0, 1.0, 2.0):
        assert budget.allows(t, 0.5)
        budget.record(t, 0.5)
    assert not budget.allows(3.0, 0.5)
    assert budget.allows(10.5, 0.5)  # the first pulse has left the window


@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0.05, 3.0)), max_size=40))
def test_the_budget_is_never_exceeded_in_any_window(requests: list[tuple[float, float]]) -> None:
    budget = DutyBudget(budget_s=3.0, window_s=10.0)
    now, granted = 0.0, []
    for gap, seconds in requests:
        now += gap
        if budget.allows(now, seconds):
            budget.record(now, seconds)
            granted.append((now, seconds))
            now += seconds  # one coil: the next request comes after this pulse
    for start, _ in granted:  # every window that starts at a pulse
        on = sum(max(0.0, min(s + d, start + 10.0) - max(s, start)) for s, d in granted)
        assert on <= 3.0 + 1e-6
