"""Trusted time: the wall clock, checked against a persisted floor, with a quality flag.

A Raspberry Pi has no real-time clock: after a power cut it boots with whatever time
fake-hwclock saved, or 1970, until NTP answers. Every timestamp the agent takes comes
from :meth:`TrustedClock.now`, which says how far it can be trusted:

* ``synchronised``: systemd-timesyncd reports NTP synchronisation
  (``/run/systemd/timesync/synchronized`` exists), or a signed platform time was received
  in this run and the clock agrees with it;
* ``floor``: not synchronised, but the wall clock is at or after the persisted floor and
  has not jumped forward implausibly since it was last trusted;
* ``untrusted``: the wall clock contradicts the floor (behind it, or more than
  ``max_forward_jump_s`` ahead of floor + elapsed monotonic time); the reading is then the
  floor plus the monotonic time elapsed since, a lower bound, never the wall clock. Also
  a device that has never had trusted time (no floor, no NTP): the wall clock, flagged.

The floor moves forward with trusted readings (written at most every
``persist_interval_s``, fsynced, atomically) and with signed platform time; only NTP may
move it back (a floor once set too far ahead would otherwise stick).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from edge.atomic import write_atomically

log = logging.getLogger(__name__)

TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


PLATFORM_TOLERANCE_S = 300.0  # a signed time this far behind the floor is still current


class TimeQuality(StrEnum):
    """How far a timestamp can be trusted; values are stable event fields."""

    SYNCHRONISED = "synchronised"
    FLOOR = "floor"
    UNTRUSTED = "untrusted"


@dataclass(frozen=True, slots=True)
class Reading:
    """A timestamp (Unix seconds) and its quality."""

    ts: float
    quality: TimeQuality


def timesyncd_synchronised(flag: Path = TIMESYNCD_FLAG) -> bool:
    """True if systemd-timesyncd has synchronised the clock in this boot."""
    return flag.exists()


class TrustedClock:
    """The agent's clock. ``wall``, ``monotonic`` and ``synchronised`` are injectable."""

    def __init__(
        self,
        floor_path: Path,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        synchronised: Callable[[], bool] = timesyncd_synchronised,
        max_forward_jump_s: float = 7 * 86400.0,
        persist_interval_s: float = 60.0,
    ) -> None:
        self.floor_path = floor_path
        self._wall = wall
        self._monotonic = monotonic
        self._synchronised = synchronised
        self._max_jump = max_forward_jump_s
        self._persist_interval = persist_interval_s
        self._floor = _read_floor(floor_path)
        self._floor_at = monotonic()  # monotonic time when the floor was last trusted
        self._persisted = self._floor
        self._persisted_at = self._floor_at
        self._platform_synced = False
        self.last_quality: TimeQuality | None = None

    @property
    def floor(self) -> float:
        return self._floor

    def now(self) -> Reading:
        """The current time and its quality; moves (and now and then saves) the floor."""
        wall, mono = self._wall(), self._monotonic()
        earliest = self._floor + (mono - self._floor_at)  # the floor, carried forward
        if self._synchronised():
            # NTP is the authority: it may even correct a floor that was set too far ahead.
            if wall < self._floor:
                log.warning("NTP time %.0f is behind the floor %.0f: the floor follows NTP",
                            wall, self._floor)
                self._floor = wall
            reading = Reading(wall, TimeQuality.SYNCHRONISED)
        elif self._platform_synced and wall >= self._floor - PLATFORM_TOLERANCE_S:
            # A signed platform time agreed with the wall clock; it never moves the floor back.
            reading = Reading(max(wall, self._floor), TimeQuality.SYNCHRONISED)
        elif self._floor == 0:
            reading = Reading(wall, TimeQuality.UNTRUSTED)  # never had trusted time
        elif wall < self._floor or wall - earliest > self._max_jump:
            reading = Reading(earliest, TimeQuality.UNTRUSTED)  # backwards, or a wild jump
        else:
            reading = Reading(wall, TimeQuality.FLOOR)
        if reading.quality is not TimeQuality.UNTRUSTED:
            self._trust(reading.ts, mono)
        if reading.quality is not self.last_quality:
            log.log(logging.WARNING if reading.quality is TimeQuality.UNTRUSTED else logging.INFO,
                    "time quality is now %s (wall %.0f, floor %.0f)", reading.quality.value,
                    wall, self._floor)
            self.last_quality = reading.quality
        return reading

    def platform_time(self, ts: float) -> bool:
        """A signed platform time (already verified by the caller): trust it as a floor.

        Refused (False) when more than :data:`PLATFORM_TOLERANCE_S` behind the floor: a
        captured ``set_time`` replayed later must not pull the time back. When the wall
        clock agrees with it (within 5 s), readings count as synchronised, and the floor
        still never moves back without NTP.
        """
        if ts < self._floor - PLATFORM_TOLERANCE_S:
            return False
        self._platform_synced = abs(self._wall() - ts) < 5.0
        self._trust(ts, self._monotonic(), force_save=True)
        return True

    def save(self) -> None:
        """Persist the floor now (at shutdown)."""
        self._write(self._floor)

    def _trust(self, ts: float, mono: float, *, force_save: bool = False) -> None:
        if ts > self._floor:
            self._floor, self._floor_at = ts, mono
        if force_save or mono - self._persisted_at >= self._persist_interval:
            self._write(self._floor)
            self._persisted_at = mono

    def _write(self, floor: float) -> None:
        if floor <= self._persisted and self.floor_path.exists():
            return
        try:
            write_atomically(self.floor_path, f"{floor:.3f}\n", encoding="ascii")
            self._persisted = floor
        except OSError as exc:  # the floor is an aid; failing to save it must not stop us
            log.warning("cannot save the time floor to %s: %s", self.floor_path, exc)


def _read_floor(path: Path) -> float:
    try:
        return max(0.0, float(path.read_text(encoding="ascii").strip() or 0))
    except (OSError, ValueError):
        return 0.0
