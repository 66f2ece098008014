"""Brute-force defence at the reader: too many bad credentials in a short time lock it.

Policy, no I/O. Only credential failures count (malformed, forged, unknown key, wrong
type or site, bad claims): a member holding an expired badge, or one without a skill,
is not guessing. While locked, every scan is refused with ``locked_out`` without even
verifying it, which also bounds the CPU a flood of forgeries can take.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class FailureThrottle:
    """Locks for ``lockout_s`` after ``max_failures`` failures within ``window_s``."""

    def __init__(self, *, max_failures: int = 5, window_s: float = 60.0,
                 lockout_s: float = 120.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._max = max_failures
        self._window = window_s
        self._lockout = lockout_s
        self._monotonic = monotonic
        self._failures: deque[float] = deque()
        self._locked_until = 0.0
        self.lockouts = 0

    @property
    def locked(self) -> bool:
        return self._monotonic() < self._locked_until

    def failure(self) -> bool:
        """Count a credential failure; True if it starts a lockout."""
        now = self._monotonic()
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self._window:
            self._failures.popleft()
        if len(self._failures) >= self._max and not self.locked:
            self._locked_until = now + self._lockout
            self._failures.clear()
            self.lockouts += 1
            return True
        return False

    def reconfigure(self, *, max_failures: int, window_s: float, lockout_s: float) -> None:
        """New limits (a remote configuration change); counted failures are kept."""
        self._max = max_failures
        self._window = window_s
        self._lockout = lockout_s
