"""What the agent makes of sensor readings: per-minute aggregates and health. Pure.

:class:`MinuteAggregator` folds calibrated readings into one aggregate per wall-clock
minute and metric (mean, min, max, count), closed when a reading of a later minute
arrives or :meth:`MinuteAggregator.flush` is called. :class:`SensorHealth` watches for
the four ways a curb sensor goes wrong: **stale** (no reading for ``stale_after_s``),
**stuck** (the same values ``stuck_after`` times in a row), **out_of_range** (a value
outside its plausible range) and **checksum_errors** (more than ``max_error_rate`` of the
frames in the last ``error_window`` were bad: a loose connector, a failing fan). Each
problem is reported once when it starts and once when it clears.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Running:
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def summary(self) -> dict[str, float | int]:
        return {"mean": round(self.total / self.count, 3), "min": self.low, "max": self.high,
                "count": self.count}


@dataclass
class MinuteAggregator:
    """Aggregates of one sensor's metrics per wall-clock window (a minute by default)."""

    window_s: int = 60
    minute: int | None = None  # the open window, Unix seconds // window_s
    _metrics: dict[str, _Running] = field(default_factory=dict)

    def add(self, ts: float, values: Mapping[str, float]) -> list[dict[str, Any]]:
        """Fold a reading taken at ``ts``; return the minutes it closed (at most one)."""
        closed = self.flush(ts)
        if self.minute is None:
            self.minute = int(ts // self.window_s)
        for name, value in values.items():
            self._metrics.setdefault(name, _Running()).add(value)
        return closed

    def flush(self, ts: float) -> list[dict[str, Any]]:
        """Close the open minute if ``ts`` is past it."""
        if self.minute is None or int(ts // self.window_s) <= self.minute:
            return []
        closed = {"minute": self.minute * self.window_s, "window_s": self.window_s,
                  "metrics": {name: r.summary() for name, r in self._metrics.items()}}
        self.minute, self._metrics = None, {}
        return [closed]


@dataclass(frozen=True)
class HealthChange:
    """A problem that started (``active``) or cleared."""

    problem: str
    active: bool
    detail: str


@dataclass
class SensorHealth:
    """Health of one sensor from its readings, its frame counts and the time."""

    stale_after_s: float
    stuck_after: int
    ranges: Mapping[str, tuple[float, float]]
    max_error_rate: float = 0.2
    error_window: int = 50
    _active: set[str] = field(default_factory=set)
    _last_reading: float | None = None
    _last_values: dict[str, float] | None = None
    _same: int = 0
    _outcomes: deque[bool] = field(default_factory=deque)  # True: a good frame

    @property
    def problems(self) -> frozenset[str]:
        return frozenset(self._active)

    def reading(self, ts: float, values: Mapping[str, float]) -> list[HealthChange]:
        """A decoded reading (raw, before calibration) at ``ts``."""
        changes = self._set("stale", False, "readings again")
        self._last_reading = ts
        same = self._last_values is not None and dict(values) == self._last_values
        self._same = self._same + 1 if same else 1
        self._last_values = dict(values)
        changes += self._set("stuck", self._same >= self.stuck_after,
                             f"the same values {self._same} times in a row")
        outside = [f"{name}={value:g} outside {self.ranges[name]}"
                   for name, value in values.items() if name in self.ranges
                   and not self.ranges[name][0] <= value <= self.ranges[name][1]]
        changes += self._set("out_of_range", bool(outside), "; ".join(outside) or "in range")
        return changes

    def frames(self, good: int, bad: int) -> list[HealthChange]:
        """Frames decoded (``good``) and refused (``bad``) since the last call."""
        self._outcomes.extend([True] * good + [False] * bad)
        while len(self._outcomes) > self.error_window:
            self._outcomes.popleft()
        if len(self._outcomes) < min(10, self.error_window):
            return []
        rate = self._outcomes.count(False) / len(self._outcomes)
        return self._set("checksum_errors", rate > self.max_error_rate,
                         f"{rate:.0%} of the last {len(self._outcomes)} frames were bad")

    def tick(self, ts: float, since: float) -> list[HealthChange]:
        """The time now; ``since`` is when sampling started (stale counts from there)."""
        last = self._last_reading if self._last_reading is not None else since
        silent = ts - last
        return self._set("stale", silent > self.stale_after_s,
                         f"no reading for {silent:.0f}s")

    def _set(self, problem: str, active: bool, detail: str) -> list[HealthChange]:
        if active == (problem in self._active):
            return []
        (self._active.add if active else self._active.discard)(problem)
        return [HealthChange(problem, active, detail)]
