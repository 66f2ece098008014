"""Sensor aggregates and health: minutes, and the four ways a curb sensor goes wrong."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.sensor_stats import MinuteAggregator, SensorHealth

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


def test_a_minute_closes_when_the_next_one_starts() -> None:
    agg = MinuteAggregator()
    assert agg.add(T0 + 1, {"pm2_5": 10.0}) == []
    assert agg.add(T0 + 30, {"pm2_5": 14.0}) == []
    [closed] = agg.add(T0 + 61, {"pm2_5": 3.0})
    assert closed == {"minute": int(T0), "window_s": 60, "metrics": {"pm2_5": {
        "mean": 12.0, "min": 10.0, "max": 14.0, "count": 2}}}
    [last] = agg.flush(T0 + 125)
    assert last["metrics"]["pm2_5"]["count"] == 1


@given(st.lists(st.tuples(st.floats(0, 600), st.floats(0, 1000)), min_size=1, max_size=60))
def test_every_reading_lands_in_exactly_one_minute(samples: list[tuple[float, float]]) -> None:
    agg, closed = MinuteAggregator(), []
    for offset, value in sorted(samples):
        closed += agg.add(T0 + offset, {"pm2_5": value})
    closed += agg.flush(T0 + 10_000)
    assert sum(m["metrics"]["pm2_5"]["count"] for m in closed) == len(samples)
    assert len({m["minute"] for m in closed}) == len(closed)
    for m in closed:
        s = m["metrics"]["pm2_5"]
        assert s["min"] <= s["mean"] + 5e-4  # the mean is rounded to 3 decimals
        assert s["mean"] <= s["max"] + 5e-4


def health() -> SensorHealth:
    return SensorHealth(stale_after_s=120, stuck_after=3, ranges={"pm2_5": (0, 1000)},
                        max_error_rate=0.2, error_window=20)


def test_stale_starts_and_clears_once() -> None:
    h = health()
    assert h.tick(T0 + 100, since=T0) == []
    [started] = h.tick(T0 + 121, since=T0)
    assert (started.problem, started.active) == ("stale", True)
    assert h.tick(T0 + 200, since=T0) == []  # reported once
    [cleared] = h.reading(T0 + 201, {"pm2_5": 5.0})
    assert (cleared.problem, cleared.active) == ("stale", False)


def test_stuck_and_out_of_range() -> None:
    h = health()
    changes = [c for i in range(3) for c in h.reading(T0 + i, {"pm2_5": 7.0})]
    assert [(c.problem, c.active) for c in changes] == [("stuck", True)]
    changes = h.reading(T0 + 4, {"pm2_5": 2000.0})
    assert [(c.problem, c.active) for c in changes] == [("stuck", False),
                                                        ("out_of_range", True)]
    assert "2000" in changes[1].detail
    assert h.problems == {"out_of_range"}


def test_a_rising_checksum_error_rate() -> None:
    h = health()
    assert h.frames(good=10, bad=1) == []
    [bad] = h.frames(good=2, bad=5)
    assert (bad.problem, bad.active) == ("checksum_errors", True)
    [good] = h.frames(good=20, bad=0)
    assert good.active is False
