"""Brute-force defence: lockout after repeated bad credentials, in a window, for a while."""

from __future__ import annotations

from edge.throttle import FailureThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_locks_after_max_failures_within_the_window_and_unlocks_later() -> None:
    clock = Clock()
    throttle = FailureThrottle(max_failures=3, window_s=10, lockout_s=60, monotonic=clock)
    assert [throttle.failure() for _ in range(2)] == [False, False]
    assert not throttle.locked
    assert throttle.failure() is True
    assert throttle.locked
    clock.now += 59
    assert throttle.locked
    clock.now += 2
    assert not throttle.locked
    assert throttle.lockouts == 1


def test_failures_spread_beyond_the_window_never_lock() -> None:
    clock = Clock()
    throttle = FailureThrottle(max_failures=3, window_s=10, lockout_s=60, monotonic=clock)
    for _ in range(20):
        assert throttle.failure() is False
        clock.now += 6
    assert not throttle.locked
