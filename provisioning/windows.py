"""Weekly time windows, as written in a badge's ``win`` claim.

A window is the text ``"DAYS HH:MM-HH:MM"``: ``DAYS`` are ISO weekday digits (1 Monday ..
7 Sunday), then a start and an end in the site's local time, start inclusive and end
exclusive, ``24:00`` allowed as an end. ``"12345 08:00-20:00"`` is weekdays eight to
eight; a span across midnight is two windows (``"5 22:00-24:00"``, ``"6 00:00-02:00"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_WINDOW = re.compile(r"^([1-7]{1,7}) ([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})$")
MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class WeeklyWindow:
    """Days of the week (1..7) and a span of minutes since local midnight, [start, end)."""

    days: frozenset[int]
    start_minute: int
    end_minute: int

    @classmethod
    def parse(cls, text: str) -> WeeklyWindow:
        """Parse ``"12345 08:00-20:00"``; raise ValueError saying what is wrong."""
        match = _WINDOW.match(text)
        if match is None:
            raise ValueError(f"expected 'DAYS HH:MM-HH:MM' (days 1-7), got {text!r}")
        days_text, h1, m1, h2, m2 = match.groups()
        if len(set(days_text)) != len(days_text):
            raise ValueError(f"a day appears twice in {text!r}")
        start, end = _minute(h1, m1, text), _minute(h2, m2, text)
        if not start < end:
            raise ValueError(f"the window must end after it starts: {text!r}")
        return cls(frozenset(int(d) for d in days_text), start, end)

    def contains(self, local: datetime) -> bool:
        """True if ``local`` (a time in the site's zone) falls inside the window."""
        minute = local.hour * 60 + local.minute
        return local.isoweekday() in self.days and self.start_minute <= minute < self.end_minute

    def __str__(self) -> str:
        days = "".join(str(d) for d in sorted(self.days))
        return f"{days} {_hhmm(self.start_minute)}-{_hhmm(self.end_minute)}"


def _minute(hours: str, minutes: str, text: str) -> int:
    value = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or value > MINUTES_PER_DAY:
        raise ValueError(f"not a time of day in {text!r}")
    return value


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
