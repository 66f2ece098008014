"""Coil duty budget: how long a solenoid may be energised within a rolling window.

A strike solenoid rated for intermittent duty overheats if pulsed back to back (a
member hammering the reader, an audit mode over a large bank). Each coil may be on for
at most ``budget_s`` within any ``window_s``; a pulse that would exceed it is refused
before anything is energised. Pure: the caller passes the monotonic time.
"""

from __future__ import annotations

from collections import deque


class DutyBudget:
    """On-time accounting for one coil over a rolling window."""

    def __init__(self, *, budget_s: float, window_s: float) -> None:
        self.budget_s = budget_s
        self.window_s = window_s
        self._pulses: deque[tuple[float, float]] = deque()  # (start, seconds)

    def used(self, now: float) -> float:
        """Seconds of on-time within the window ending at ``now``."""
        while self._pulses and self._pulses[0][0] + self._pulses[0][1] <= now - self.window_s:
            self._pulses.popleft()
        start_of_window = now - self.window_s
        return sum(min(seconds, start + seconds - start_of_window)
                   for start, seconds in self._pulses)

    def allows(self, now: float, seconds: float) -> bool:
        """True if a pulse of ``seconds`` starting now stays within the budget."""
        return self.used(now) + seconds <= self.budget_s + 1e-9

    def record(self, now: float, seconds: float) -> None:
        """Count a pulse that started at ``now``."""
        self._pulses.append((now, seconds))
