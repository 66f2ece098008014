"""Calibration: fits recover known coefficients, the quality check, and the history."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.calibration import (
    CalibrationHistory,
    Coefficients,
    Quality,
    check_quality,
    fit_colocation,
    fit_span,
    fit_zero,
)

NOW = 1_800_000_000


def sensor_readings(reference: list[float], offset: float, gain: float) -> list[float]:
    """What a sensor with this calibration error reads: ``gain * (raw + offset) = ref``."""
    return [f / gain - offset for f in reference]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def test_identity_reads_raw() -> None:
    identity = Coefficients.identity()
    assert (identity.model, identity.offset, identity.gain) == ("linear", 0.0, 1.0)
    assert identity.apply(12.5) == 12.5


def test_linear_applies_gain_after_offset() -> None:
    assert Coefficients.linear(-2.0, 1.5).apply(10.0) == 12.0


def test_zero_moves_the_offset_and_keeps_the_gain() -> None:
    fitted = fit_zero([2.0, 3.0, 4.0], Coefficients.linear(5.0, 1.25))
    assert (fitted.offset, fitted.gain) == (-3.0, 1.25)
    assert fitted.apply(3.0) == 0.0


def test_span_meets_the_reference_after_the_current_offset() -> None:
    current = Coefficients.linear(-3.0, 1.0)
    fitted = fit_span([53.0, 53.0, 53.0], 100.0, current)
    assert (fitted.offset, fitted.gain) == (-3.0, 2.0)
    assert fit_span([52.0, 53.0, 54.0], [99.0, 100.0, 101.0], current) == fitted


def test_zero_then_span_recovers_a_known_sensor_error() -> None:
    offset, gain = 4.2, 0.8
    zeroed = fit_zero(sensor_readings([0.0] * 5, offset, gain))
    spanned = fit_span(sensor_readings([80.0] * 5, offset, gain), 80.0, zeroed)
    assert close(spanned.offset, offset)
    assert close(spanned.gain, gain)


def test_colocation_recovers_offset_and_gain_by_least_squares() -> None:
    reference = [0.0, 5.0, 12.0, 25.0, 40.0, 80.0]
    fitted = fit_colocation(sensor_readings(reference, -7.5, 1.3), reference)
    assert close(fitted.offset, -7.5)
    assert close(fitted.gain, 1.3)


def test_piecewise_goes_through_the_mean_reading_at_each_reference_level() -> None:
    raw = [9.0, 11.0, 20.0, 22.0, 24.0, 58.0, 62.0]
    reference = [10.0, 10.0, 25.0, 25.0, 25.0, 50.0, 50.0]
    fitted = fit_colocation(raw, reference, model="piecewise")
    assert fitted.points == ((10.0, 10.0), (22.0, 25.0), (60.0, 50.0))
    assert [fitted.apply(r) for r in (10.0, 22.0, 60.0)] == [10.0, 25.0, 50.0]
    assert fitted.apply(16.0) == 17.5  # halfway along the first segment
    assert fitted.apply(4.0) == 2.5  # beyond the ends, the end segments carry on
    assert close(fitted.apply(98.0), 75.0)


def test_coefficients_round_trip_through_their_claim() -> None:
    for coefficients in (Coefficients.linear(-1.5, 1.1),
                         Coefficients.piecewise([(30.0, 40.0), (0.0, 1.0)])):
        assert Coefficients.from_claim(coefficients.to_claim()) == coefficients
    assert Coefficients.piecewise([(30.0, 40.0), (0.0, 1.0)]).to_claim() == {
        "model": "piecewise", "points": [[0.0, 1.0], [30.0, 40.0]]}


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Coefficients.linear(0.0, -1.0), "gain"),
    (lambda: Coefficients.linear(math.nan, 1.0), "offset"),
    (lambda: Coefficients.piecewise([(0.0, 5.0), (1.0, 4.0)]), "increase"),
    (lambda: Coefficients.piecewise([(0.0, 5.0)]), "points"),
    (lambda: Coefficients("piecewise", gain=2.0, points=((0, 0), (1, 1))), "not an offset"),
    (lambda: Coefficients.from_claim({"model": "cubic"}), "coefficients"),
])
def test_unusable_coefficients_are_refused(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]  # each case is a zero-argument callable


@pytest.mark.parametrize(("fit", "message"), [
    (lambda: fit_zero([1.0, 2.0]), "at least 3"),
    (lambda: fit_zero([1.0, math.inf, 2.0]), "finite"),
    (lambda: fit_zero([1.0, 2.0, 3.0], Coefficients.piecewise([(0, 0), (1, 1)])), "linear"),
    (lambda: fit_span([5.0, 5.0, 5.0], 0.0), "zero calibration"),
    (lambda: fit_span([3.0, 3.0, 3.0], 50.0, Coefficients.linear(-3.0, 1.0)), "zero point"),
    (lambda: fit_span([1.0, 2.0, 3.0], -50.0), "gain"),
    (lambda: fit_span([1.0, 2.0, 3.0], [50.0, 50.0]), "3 raw readings for 2"),
    (lambda: fit_colocation([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]), "two distinct"),
    (lambda: fit_colocation([4.0, 4.0, 4.0], [1.0, 2.0, 3.0]), "zero variance"),
    (lambda: fit_colocation([3.0, 2.0, 1.0], [1.0, 2.0, 3.0]), "gain"),
    (lambda: fit_colocation([3.0, 2.0, 1.0], [1.0, 2.0, 3.0], "piecewise"), "gain <= 0"),
    (lambda: fit_colocation([1.0, math.nan, 3.0], [1.0, 2.0, 3.0]), "finite"),
    (lambda: check_quality(Coefficients.identity(), [1.0] * 3, 1.0, -0.1), "tolerance"),
])
def test_unusable_input_raises_a_clear_value_error(fit: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit()  # type: ignore[operator]  # each case is a zero-argument callable


def test_quality_passes_at_the_tolerance_and_fails_just_beyond() -> None:
    coefficients = Coefficients.linear(0.0, 1.0)
    at_bound = check_quality(coefficients, [10.0, 20.0, 30.0], [10.0, 18.0, 30.0], 2.0)
    assert at_bound == Quality(residuals=(0.0, 2.0, 0.0), rmse=math.sqrt(4 / 3), max_abs=2.0,
                               tolerance=2.0, passed=True)
    beyond = check_quality(coefficients, [10.0, 20.0, 30.0], [10.0, 18.0, 30.0], 1.999999)
    assert not beyond.passed
    below = check_quality(coefficients, [10.0, 20.0, 30.0], [10.0, 22.0, 30.0], 2.0)
    assert (below.residuals, below.passed) == ((0.0, -2.0, 0.0), True)


@settings(max_examples=300, deadline=None)
@given(gain=st.floats(0.5, 2.0), offset=st.floats(-20.0, 20.0),
       reference=st.lists(st.integers(0, 500), min_size=3, max_size=20, unique=True),
       repeats=st.integers(1, 3))
def test_colocation_recovers_any_linear_sensor_error(gain: float, offset: float,
                                                     reference: list[int], repeats: int) -> None:
    levels = [float(f) for f in reference] * repeats
    raw = sensor_readings(levels, offset, gain)
    fitted = fit_colocation(raw, levels)
    assert math.isclose(fitted.gain, gain, rel_tol=1e-9)
    assert math.isclose(fitted.offset, offset, rel_tol=1e-9, abs_tol=1e-9)
    assert check_quality(fitted, raw, levels, 1e-6).passed
    through = fit_colocation(raw, levels, model="piecewise")
    assert all(math.isclose(through.apply(r), f, abs_tol=1e-9) for r, f in zip(raw, levels,
                                                                               strict=True))


def history_with_two(path: Path) -> CalibrationHistory:
    history = CalibrationHistory(path)
    history.apply("pm-1", Coefficients.linear(-3.0, 1.0), passed=True, when=NOW, who="mia",
                  method="zero")
    history.apply("pm-1", Coefficients.linear(-3.0, 1.2), passed=True, when=NOW + 60.5,
                  who="mia", method="span")
    return history


def test_an_uncalibrated_sensor_reads_raw(tmp_path: Path) -> None:
    history = CalibrationHistory(tmp_path / "calibration.json")
    assert history.current("pm-1") == Coefficients.identity()
    assert (history.entries("pm-1"), history.version("pm-1")) == ((), 0)


def test_apply_makes_a_calibration_current_and_numbers_it(tmp_path: Path) -> None:
    history = history_with_two(tmp_path / "calibration.json")
    assert history.current("pm-1") == Coefficients.linear(-3.0, 1.2)
    assert [(e.version, e.method, e.who, e.when) for e in history.entries("pm-1")] == [
        (1, "zero", "mia", NOW), (2, "span", "mia", NOW + 60.5)]
    assert history.current("no2-1") == Coefficients.identity()


def test_a_failed_attempt_is_recorded_but_not_applied(tmp_path: Path) -> None:
    history = history_with_two(tmp_path / "calibration.json")
    failed = check_quality(Coefficients.linear(0.0, 9.0), [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 0.5)
    version = history.apply("pm-1", Coefficients.linear(0.0, 9.0), passed=failed.passed,
                            when=NOW + 120, who="bo", method="colocation")
    assert (version, history.entries("pm-1")[-1].passed) == (3, False)
    assert history.current("pm-1") == Coefficients.linear(-3.0, 1.2)


def test_rollback_steps_back_as_new_versions_and_never_rewrites(tmp_path: Path) -> None:
    history = history_with_two(tmp_path / "calibration.json")
    history.apply("pm-1", Coefficients.linear(0.0, 9.0), passed=False, when=NOW, who="bo",
                  method="span")
    assert history.rollback("pm-1", when=NOW + 200, who="mia") == Coefficients.linear(-3.0, 1.0)
    assert history.rollback("pm-1", when=NOW + 300, who="mia") == Coefficients.identity()
    assert history.current("pm-1") == Coefficients.identity()
    with pytest.raises(ValueError, match="no calibration to roll back"):
        history.rollback("pm-1", when=NOW + 400, who="mia")
    entries = history.entries("pm-1")
    assert [(e.version, e.method, e.restores) for e in entries] == [
        (1, "zero", None), (2, "span", None), (3, "span", None), (4, "rollback", 1),
        (5, "rollback", 0)]


def test_a_calibration_after_a_rollback_rolls_back_to_what_was_restored(tmp_path: Path) -> None:
    history = history_with_two(tmp_path / "calibration.json")
    history.rollback("pm-1", when=NOW, who="mia")
    history.apply("pm-1", Coefficients.linear(-2.0, 1.1), passed=True, when=NOW, who="mia")
    assert history.rollback("pm-1", when=NOW, who="mia") == Coefficients.linear(-3.0, 1.0)


def test_history_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    history = history_with_two(path)
    history.rollback("pm-1", when=NOW + 200, who="mia")
    again = CalibrationHistory(path)
    assert again.entries("pm-1") == history.entries("pm-1")
    assert again.current("pm-1") == Coefficients.linear(-3.0, 1.0)
    assert not path.with_name(path.name + ".tmp").exists()


@pytest.mark.parametrize("damage", [
    "{not json", "[]", '{"format": 2, "sensors": {}}',
    '{"format": 1, "sensors": {"pm-1": [{"version": 2}]}}', "\udcff",
])
def test_a_damaged_history_is_set_aside_and_starts_empty(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(damage, encoding="utf-8", errors="surrogateescape")
    with caplog.at_level(logging.ERROR, logger="edge.calibration"):
        history = CalibrationHistory(path)
    assert history.current("pm-1") == Coefficients.identity()
    assert "starting empty" in caplog.text
    assert path.with_name("calibration.json.damaged").exists()
    assert history.apply("pm-1", Coefficients.identity(), passed=True, when=NOW,
                         who="mia") == 1


def test_versions_must_count_up_in_a_history_file(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    history_with_two(path)
    document = json.loads(path.read_text())
    document["sensors"]["pm-1"].reverse()
    path.write_text(json.dumps(document))
    assert CalibrationHistory(path).entries("pm-1") == ()


def test_a_history_that_cannot_be_saved_changes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    history = CalibrationHistory(blocker / "calibration.json")
    with pytest.raises(OSError):  # noqa: PT011  # any OSError: the filesystem chooses which
        history.apply("pm-1", Coefficients.linear(1.0, 1.0), passed=True, when=NOW, who="m")
    assert history.current("pm-1") == Coefficients.identity()


def test_a_malformed_sensor_id_is_refused(tmp_path: Path) -> None:
    history = CalibrationHistory(tmp_path / "calibration.json")
    with pytest.raises(ValueError, match="sensors"):
        history.apply("pm 1", Coefficients.identity(), passed=True, when=NOW, who="mia")
