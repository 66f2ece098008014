"""When to try the broker again: the MQTT link's reconnect policy.

Pure policy, no I/O: capped exponential backoff with full jitter, and how long a
connection must stay up to count as healthy and start the backoff over. :mod:`edge.link`
waits as told; the agent's other retry loops draw their delays from :func:`backoff_delay`
too.
"""

from __future__ import annotations

import random

# A connection that stays up this long (or 2 x keepalive, if longer: see stable_after_s)
# counts as healthy, and the next reconnect starts from reconnect_min_s again; a shorter one
# counts as a failed attempt. What takes a connection only to drop it (an authorisation
# plugin, a load balancer with no healthy backend, a clone of this device with the same
# client id taking the session over at its next retry) mostly does so within a second or
# two of CONNACK, so such a loop backs off to reconnect_max_s. And whatever drops longer
# connections, the backoff starts over at most once per STABLE_AFTER_MIN_S: at worst 100
# quick reconnects a second for a fleet of 1,000. Resetting on every connect instead let a
# connect-then-drop loop spin at about 600 connections a second per device (local broker).
STABLE_AFTER_MIN_S = 10.0


def backoff_window(attempt: int, base_s: float, cap_s: float) -> float:
    """The upper end (seconds) of the full-jitter range after ``attempt`` failures in a row
    (0-based): ``min(cap, base * 2**attempt)``, never below ``base``."""
    return max(min(cap_s, base_s * 2.0 ** min(attempt, 32)), base_s)


def backoff_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    window = backoff_window(attempt, base_s, cap_s)
    return random.uniform(0, window)  # noqa: S311  # jitter, not cryptography


def stable_after_s(keepalive_s: float) -> float:
    """How long (seconds) a connection must stay up before the backoff starts over.

    At least 2 x keepalive: by then the connection has carried a PINGREQ/PINGRESP and
    outlived the broker's keepalive deadline (1.5 x keepalive, MQTT 3.1.1 and 5.0 section
    3.1.2.10), so a middlebox or broker that drops quiet or unwelcome connections would
    already have dropped it; and never less than :data:`STABLE_AFTER_MIN_S`.
    """
    return max(STABLE_AFTER_MIN_S, 2.0 * keepalive_s)


class ReconnectBackoff:
    """When to try the broker again: capped exponential backoff with full jitter.

    Each delay is uniform in ``[0, window_s]``, the window being ``base_s * 2**attempt``
    capped at ``cap_s``. A failed attempt to connect and a connection lost before it had
    been up ``stable_after_s`` both count as failures and double the window; a connection
    lost after that starts it over at ``base_s``, so a whole street cut at once spreads its
    reconnects over ``base_s`` and a short blip still ends quickly. Pure but for ``rng``
    (by default a private, randomly seeded one). Raises ``ValueError`` unless
    ``0 < base_s <= cap_s`` and ``stable_after_s >= 0``.
    """

    def __init__(self, base_s: float, cap_s: float, stable_after_s: float, *,
                 rng: random.Random | None = None) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, not {base_s} and {cap_s}")
        if stable_after_s < 0:
            raise ValueError("stable_after_s is seconds, not negative")
        self.base_s = base_s
        self.cap_s = cap_s
        self.stable_after_s = stable_after_s
        self.attempt = 0  # failures since the last stable connection
        self._rng = rng if rng is not None else random.Random()  # noqa: S311  # jitter

    @property
    def window_s(self) -> float:
        """The next delay is drawn from ``[0, window_s]``."""
        return backoff_window(self.attempt, self.base_s, self.cap_s)

    def after_failure(self) -> float:
        """An attempt to connect failed: the seconds to wait before the next one."""
        delay = self._rng.uniform(0, self.window_s)
        self.attempt += 1
        return delay

    def after_loss(self, up_for_s: float) -> float:
        """A connection was lost after ``up_for_s`` seconds up: the seconds to wait before
        reconnecting (from a window of ``base_s`` again if it had been up long enough)."""
        if up_for_s >= self.stable_after_s:
            self.attempt = 0
        return self.after_failure()
