"""Weekly windows: the claim's text format, round trip and the property tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioning.windows import WeeklyWindow

FRIDAY_8 = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "inside", "outside"), [
    ("12345 08:00-20:00", [FRIDAY_8, FRIDAY_8.replace(hour=19, minute=59)],
     [FRIDAY_8.replace(hour=20), FRIDAY_8 + timedelta(days=1)]),
    ("6 00:00-24:00", [FRIDAY_8 + timedelta(days=1, hours=15, minutes=59)], [FRIDAY_8]),
    ("75 22:00-24:00", [FRIDAY_8.replace(hour=23)], [FRIDAY_8.replace(hour=21, minute=59)]),
])
def test_windows_contain_their_span_only(text: str, inside: list[datetime],
                                         outside: list[datetime]) -> None:
    window = WeeklyWindow.parse(text)
    assert all(window.contains(t) for t in inside)
    assert not any(window.contains(t) for t in outside)


@pytest.mark.parametrize("text", ["", "8 08:00-09:00", "0 08:00-09:00", "11 08:00-09:00",
                                  "1 09:00-08:00", "1 08:00-08:00", "1 08:60-09:00",
                                  "1 24:00-24:30", "1 8:00-9:00", "1  08:00-09:00",
                                  "mon 08:00-09:00", "1 08:00-25:00", "1 08:00 - 09:00"])
def test_malformed_windows_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|twice|after|time of day"):
        WeeklyWindow.parse(text)


@given(st.text(max_size=40))
def test_parsing_never_fails_other_than_with_value_error(text: str) -> None:
    try:
        window = WeeklyWindow.parse(text)
    except ValueError:
        return
    assert WeeklyWindow.parse(str(window)) == window


@given(days=st.sets(st.integers(1, 7), min_size=1), start=st.integers(0, 1439),
       length=st.integers(1, 1440))
def test_valid_windows_round_trip(days: set[int], start: int, length: int) -> None:
    end = min(start + length, 1440)
    window = WeeklyWindow(frozenset(days), start, end)
    assert WeeklyWindow.parse(str(window)) == window
