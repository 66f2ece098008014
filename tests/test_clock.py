"""Trusted time: the floor, clocks that go backwards or leap, NTP and platform time."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.clock import TimeQuality, TrustedClock, timesyncd_synchronised

DAY = 86400.0


class FakeTime:
    def __init__(self, wall: float, synced: bool = False) -> None:
        self.wall, self.mono, self.synced = wall, 1000.0, synced

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def clock(path: Path, t: FakeTime, **kwargs: float) -> TrustedClock:
    return TrustedClock(path, wall=lambda: t.wall, monotonic=lambda: t.mono,
                        synchronised=lambda: t.synced, **kwargs)


def test_ntp_synchronised_time_is_trusted_and_saved(tmp_path: Path) -> None:
    t = FakeTime(1_800_000_000.0, synced=True)
    c = clock(tmp_path / "floor", t, persist_interval_s=0)
    assert c.now().quality is TimeQuality.SYNCHRONISED
    assert float((tmp_path / "floor").read_text()) == 1_800_000_000.0


def test_a_clock_set_back_after_a_power_cut_uses_the_floor_and_is_flagged(tmp_path: Path) -> None:
    t = FakeTime(1_800_000_000.0, synced=True)
    clock(tmp_path / "floor", t, persist_interval_s=0).now()
    rebooted = FakeTime(1_000_000.0)  # no RTC: the Pi woke up in 1970
    c = clock(tmp_path / "floor", rebooted)
    first = c.now()
    assert first.quality is TimeQuality.UNTRUSTED
    assert first.ts == 1_800_000_000.0
    rebooted.advance(30)
    assert c.now().ts == 1_800_000_030.0  # the floor carried forward by monotonic time


def test_unsynchronised_but_plausible_time_has_floor_quality(tmp_path: Path) -> None:
    t = FakeTime(1_800_000_000.0, synced=True)
    clock(tmp_path / "floor", t, persist_interval_s=0).now()
    later = FakeTime(1_800_000_000.0 + 3600)
    reading = clock(tmp_path / "floor", later).now()
    assert reading.quality is TimeQuality.FLOOR
    assert reading.ts == later.wall


def test_a_far_forward_jump_is_untrusted(tmp_path: Path) -> None:
    t = FakeTime(1_800_000_000.0, synced=True)
    c = clock(tmp_path / "floor", t, max_forward_jump_s=DAY)
    c.now()
    t.synced = False
    t.wall += 30 * DAY  # someone set the clock a month ahead
    reading = c.now()
    assert reading.quality is TimeQuality.UNTRUSTED
    assert reading.ts == pytest.approx(1_800_000_000.0)


def test_never_trusted_time_is_flagged_but_kept(tmp_path: Path) -> None:
    reading = clock(tmp_path / "floor", FakeTime(1_700_000_000.0)).now()
    assert reading.quality is TimeQuality.UNTRUSTED
    assert reading.ts == 1_700_000_000.0


def test_signed_platform_time_moves_the_floor_and_counts_as_synchronised(tmp_path: Path) -> None:
    t = FakeTime(1_000_000.0)
    c = clock(tmp_path / "floor", t)
    assert c.now().quality is TimeQuality.UNTRUSTED
    t.wall = 1_800_000_000.0  # someone fixed the clock by hand, unverified...
    c.platform_time(1_800_000_001.0)  # ...and the platform confirms it
    assert c.now().quality is TimeQuality.SYNCHRONISED
    assert float((tmp_path / "floor").read_text()) >= 1_800_000_000.0


def test_a_replayed_old_platform_time_cannot_pull_the_time_back(tmp_path: Path) -> None:
    """A set_time captured a month ago, replayed on a Pi whose clock reads that month."""
    month = 30 * 86400
    (tmp_path / "floor").write_text(f"{1_800_000_000 + month}.0\n")
    t = FakeTime(1_800_000_000.0)  # no RTC: the wall clock came back a month behind
    c = clock(tmp_path / "floor", t)
    assert c.now().quality is TimeQuality.UNTRUSTED
    assert not c.platform_time(1_800_000_000.0)
    reading = c.now()
    assert reading.quality is TimeQuality.UNTRUSTED
    assert reading.ts >= 1_800_000_000 + month
    assert c.platform_time(1_800_000_000.0 + month - 10)  # current, within the tolerance


def test_platform_sync_never_moves_the_floor_back(tmp_path: Path) -> None:
    t = FakeTime(1_800_000_000.0)
    c = clock(tmp_path / "floor", t)
    assert c.platform_time(1_800_000_000.0)
    t.wall, t.mono = 1_800_000_100.0, t.mono + 100
    assert c.now().quality is TimeQuality.SYNCHRONISED
    t.wall = 1_700_000_000.0  # the wall clock is set back by hand: not NTP
    reading = c.now()
    assert reading.quality is TimeQuality.UNTRUSTED
    assert reading.ts >= 1_800_000_100.0


def test_ntp_corrects_a_floor_that_was_too_far_ahead(tmp_path: Path) -> None:
    (tmp_path / "floor").write_text("1900000000.0\n")
    t = FakeTime(1_800_000_000.0, synced=True)
    c = clock(tmp_path / "floor", t)
    assert c.now().quality is TimeQuality.SYNCHRONISED
    assert c.floor == 1_800_000_000.0


def test_a_garbled_floor_file_counts_as_no_floor(tmp_path: Path) -> None:
    (tmp_path / "floor").write_text("not a number")
    assert clock(tmp_path / "floor", FakeTime(5.0)).floor == 0.0


def test_timesyncd_flag_file(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    assert not timesyncd_synchronised(flag)
    flag.touch()
    assert timesyncd_synchronised(flag)


@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(0, 1e4), st.booleans()),
                max_size=30))
def test_readings_never_go_below_the_floor_and_the_floor_never_drops_without_ntp(
    steps: list[tuple[float, float, bool]],
) -> None:
    t = FakeTime(1_800_000_000.0, synced=True)
    c = TrustedClock(Path("/nonexistent/floor"), wall=lambda: t.wall, monotonic=lambda: t.mono,
                     synchronised=lambda: t.synced, persist_interval_s=1e12)
    c.now()
    for jump, elapsed, synced in steps:
        t.mono += elapsed
        t.wall += elapsed + jump
        t.synced = synced
        before = c.floor
        reading = c.now()
        if not synced:
            assert c.floor >= before
            assert reading.ts >= before
