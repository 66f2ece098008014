"""Sensor calibration: the arithmetic, the quality check, and each sensor's history.

Domain layer of the agent: pure functions of readings, plus one small JSON file (the
history) written atomically. No hardware, no network, no clock: callers pass the time.

A linear calibration maps a raw reading to ``gain * (raw + offset)`` (``offset`` in raw
units, ``gain`` > 0); a piecewise one interpolates between ``(raw, reference)`` points and
extends its end segments beyond them. A zero calibration moves the offset, a span
calibration the gain, a co-location fits both (or the points) against a reference
instrument. ``docs/calibration.md`` gives the workflow and the maths.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.atomic import write_atomically
from provisioning.records import (
    CoefficientsClaim,
    Identifier,
    LinearCoefficients,
    Method,
    PiecewiseCoefficients,
    coefficients_claim,
)

log = logging.getLogger(__name__)

MIN_READINGS = 3  # one reading of a low-cost particle sensor is noise; average a few
Model = Literal["linear", "piecewise"]
Reference = float | Sequence[float]  # one reference value for every reading, or one each
Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Coefficients:
    """A calibration: ``linear`` (``offset``, ``gain``) or ``piecewise`` (``points``).

    Build with :meth:`identity`, :meth:`linear`, :meth:`piecewise` or :meth:`from_claim`;
    raises ValueError for a non-finite value, a gain not above 0, or points that do not
    increase strictly in both raw and reference.
    """

    model: Model = "linear"
    offset: float = 0.0
    gain: float = 1.0
    points: tuple[Point, ...] = ()

    def __post_init__(self) -> None:
        if self.model == "piecewise" and (self.offset, self.gain) != (0.0, 1.0):
            raise ValueError("a piecewise calibration has points, not an offset and a gain")
        if self.model == "linear" and self.points:
            raise ValueError("a linear calibration has an offset and a gain, not points")
        coefficients_claim(self.to_claim())  # the record's rules, in one place

    @classmethod
    def identity(cls) -> Coefficients:
        """Offset 0, gain 1: the sensor's raw reading as it is."""
        return cls()

    @classmethod
    def linear(cls, offset: float, gain: float) -> Coefficients:
        return cls("linear", offset=offset, gain=gain)

    @classmethod
    def piecewise(cls, points: Iterable[Point]) -> Coefficients:
        """Through ``(raw, reference)`` points, taken in order of raw reading."""
        return cls("piecewise", points=tuple(sorted((float(r), float(f)) for r, f in points)))

    def apply(self, raw: float) -> float:
        """The calibrated value of one raw reading."""
        if self.model == "linear":
            return self.gain * (raw + self.offset)
        raws = [point[0] for point in self.points]
        i = min(max(bisect.bisect_right(raws, raw) - 1, 0), len(self.points) - 2)
        (x0, y0), (x1, y1) = self.points[i], self.points[i + 1]
        t = (raw - x0) / (x1 - x0)
        return (1 - t) * y0 + t * y1  # exact at both ends of the segment

    def to_claim(self) -> dict[str, Any]:
        """The ``bef``/``aft`` value of a calibration record."""
        if self.model == "linear":
            return {"model": "linear", "offset": self.offset, "gain": self.gain}
        return {"model": "piecewise", "points": [list(p) for p in self.points]}

    @classmethod
    def from_claim(cls, claim: Mapping[str, Any] | LinearCoefficients | PiecewiseCoefficients,
                   ) -> Coefficients:
        """Parse a ``bef``/``aft`` claim value; raise ValueError if it is not one."""
        parsed = coefficients_claim(claim)
        if isinstance(parsed, LinearCoefficients):
            return cls.linear(parsed.offset, parsed.gain)
        return cls.piecewise(parsed.points)


@dataclass(frozen=True, slots=True)
class Quality:
    """How calibrated readings compare with the reference, in the measured unit.

    ``residuals[i] = calibrated(raw[i]) - reference[i]``; ``passed`` is True when every
    ``|residual|`` is at most ``tolerance`` (absolute, not relative).
    """

    residuals: tuple[float, ...]
    rmse: float
    max_abs: float
    tolerance: float
    passed: bool


def _readings(name: str, values: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name}: every value must be a finite number")
    return out


def _pairs(raw: Sequence[float], reference: Reference) -> tuple[tuple[float, ...],
                                                                tuple[float, ...]]:
    raws = _readings("raw", raw)
    if len(raws) < MIN_READINGS:
        raise ValueError(f"at least {MIN_READINGS} readings are needed, got {len(raws)}")
    if isinstance(reference, int | float):
        reference = [reference] * len(raws)
    refs = _readings("reference", reference)
    if len(refs) != len(raws):
        raise ValueError(f"{len(raws)} raw readings for {len(refs)} reference values")
    return raws, refs


def _linear_only(current: Coefficients, what: str) -> None:
    if current.model != "linear":
        raise ValueError(f"a {what} calibration adjusts a linear calibration; "
                         "recalibrate a piecewise one by co-location")


def fit_zero(raw: Sequence[float], current: Coefficients | None = None) -> Coefficients:
    """Offset so that the mean raw reading of zero air reads 0; the current gain stays.

    Raises ValueError for fewer than :data:`MIN_READINGS` or non-finite readings, or a
    piecewise ``current`` calibration.
    """
    current = Coefficients.identity() if current is None else current
    _linear_only(current, "zero")
    raws, _ = _pairs(raw, 0.0)
    return Coefficients.linear(-statistics.fmean(raws), current.gain)


def fit_span(raw: Sequence[float], reference: Reference,
             current: Coefficients | None = None) -> Coefficients:
    """Gain so that the mean reading meets the mean span reference, after the current
    offset; the offset stays. ``reference`` is one value or one per reading.

    Raises ValueError for too few or non-finite readings, a zero reference, readings at
    the zero point, a gain not above 0, or a piecewise ``current`` calibration.
    """
    current = Coefficients.identity() if current is None else current
    _linear_only(current, "span")
    raws, refs = _pairs(raw, reference)
    target, shifted = statistics.fmean(refs), statistics.fmean(raws) + current.offset
    if target == 0:
        raise ValueError("a span reference must not be 0: that is a zero calibration")
    if shifted == 0:
        raise ValueError("the readings sit at the zero point: no span to scale")
    gain = target / shifted
    if not (math.isfinite(gain) and gain > 0):
        raise ValueError(f"the span gives gain {gain}: the sensor does not track the reference")
    return Coefficients.linear(current.offset, gain)


def fit_colocation(raw: Sequence[float], reference: Sequence[float],
                   model: Model = "linear") -> Coefficients:
    """Fit readings taken beside a reference instrument.

    ``linear``: least squares of reference on raw (``statistics.linear_regression``), so
    ``gain`` is the slope and ``offset`` the intercept over the slope. ``piecewise``:
    through the mean raw reading at each reference level. Raises ValueError for fewer than
    :data:`MIN_READINGS` or non-finite readings, fewer than two reference levels, raw
    readings that do not vary, or a gain not above 0 (for piecewise: readings that do not
    increase with the reference).
    """
    raws, refs = _pairs(raw, reference)
    levels = sorted(set(refs))
    if len(levels) < 2:
        raise ValueError("a co-location needs at least two distinct reference values")
    if min(raws) == max(raws):
        raise ValueError("the raw readings do not vary: zero variance, nothing to fit")
    if model == "piecewise":
        return _fit_piecewise(raws, refs, levels)
    slope, intercept = statistics.linear_regression(raws, refs)
    if not slope > 0:
        raise ValueError(f"the fit gives gain {slope}: the sensor does not track the reference")
    return Coefficients.linear(intercept / slope, slope)


def _fit_piecewise(raws: Sequence[float], refs: Sequence[float],
                   levels: Sequence[float]) -> Coefficients:
    points = [(statistics.fmean(r for r, f in zip(raws, refs, strict=True) if f == level), level)
              for level in levels]
    for (raw_a, ref_a), (raw_b, ref_b) in itertools.pairwise(points):
        if raw_b <= raw_a:
            raise ValueError(f"the mean reading at reference {ref_b} is not above the one at "
                             f"{ref_a}: a piecewise calibration would have gain <= 0")
    return Coefficients.piecewise(points)


def check_quality(coefficients: Coefficients, raw: Sequence[float], reference: Reference,
                  tolerance: float) -> Quality:
    """Residuals of the calibrated readings against the reference; ``tolerance`` is an
    absolute bound in the measured unit (µg/m³ for a particle sensor).

    Raises ValueError for too few or non-finite readings, or a negative or non-finite
    tolerance.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite value >= 0, got {tolerance}")
    raws, refs = _pairs(raw, reference)
    residuals = tuple(coefficients.apply(r) - f for r, f in zip(raws, refs, strict=True))
    magnitudes = [abs(r) for r in residuals]
    return Quality(residuals=residuals,
                   rmse=math.sqrt(statistics.fmean(r * r for r in residuals)),
                   max_abs=max(magnitudes), tolerance=tolerance,
                   passed=all(m <= tolerance for m in magnitudes))


class HistoryEntry(BaseModel):
    """One calibration attempt or rollback of a sensor, as kept in the history file:
    ``when`` (Unix seconds) and by ``who``; ``method`` may be unknown (``None``).

    ``passed`` says the coefficients were applied (a failed quality check is kept but not
    applied; a rollback is always applied). ``base`` is the calibration in effect before
    this one (0: none), ``restores`` the one a rollback brought back (0: none).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int = Field(ge=1, strict=True)
    method: Method | Literal["rollback"] | None
    coefficients: CoefficientsClaim
    when: float = Field(allow_inf_nan=False)
    who: str = Field(min_length=1, max_length=64)
    passed: bool = Field(strict=True)
    base: int | None = Field(default=None, ge=0, strict=True)
    restores: int | None = Field(default=None, ge=0, strict=True)

    @model_validator(mode="after")
    def _links_point_back(self) -> HistoryEntry:
        link, unused = ((self.restores, self.base) if self.method == "rollback"
                        else (self.base, self.restores))
        if link is None or link >= self.version or unused is not None:
            raise ValueError(f"version {self.version}: a calibration names its base, a rollback "
                             "what it restores, an earlier version")
        return self


class _HistoryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal[1] = 1
    sensors: dict[Identifier, tuple[HistoryEntry, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _versions_count_up(self) -> _HistoryFile:
        for sensor, entries in self.sensors.items():
            if [e.version for e in entries] != list(range(1, len(entries) + 1)):
                raise ValueError(f"{sensor}: versions must count up from 1")
        return self


class CalibrationHistory:
    """Each sensor's calibrations, newest last, in one JSON file rewritten atomically.

    History is never rewritten: a rollback is a new version. A damaged file is logged,
    moved aside to ``<name>.damaged`` and the history starts empty (every sensor back to
    :meth:`Coefficients.identity`). Methods that change it raise OSError when the file
    cannot be written, and then change nothing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sensors: dict[str, tuple[HistoryEntry, ...]] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            self._set_aside(f"unreadable ({exc})")
            return
        try:
            self._sensors = dict(_HistoryFile.model_validate(json.loads(text)).sensors)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, ValidationError
            self._set_aside(f"damaged ({str(exc).splitlines()[0]})")

    def _set_aside(self, why: str) -> None:
        aside = self.path.with_name(self.path.name + ".damaged")
        log.error("calibration history %s %s: starting empty, old file kept as %s",
                  self.path, why, aside.name)
        try:
            self.path.replace(aside)
        except OSError as exc:
            log.error("calibration history %s could not be moved aside: %s", self.path, exc)

    def entries(self, sensor: str) -> tuple[HistoryEntry, ...]:
        """Every attempt and rollback of ``sensor``, oldest first."""
        return self._sensors.get(sensor, ())

    def version(self, sensor: str) -> int:
        """The newest version recorded for ``sensor``; 0 if none."""
        entries = self.entries(sensor)
        return entries[-1].version if entries else 0

    def current(self, sensor: str) -> Coefficients:
        """The coefficients in effect: the newest applied entry's; identity if none."""
        entry = self._in_effect(sensor)
        return Coefficients.identity() if entry is None else \
            Coefficients.from_claim(entry.coefficients)

    def apply(self, sensor: str, coefficients: Coefficients, *, passed: bool, when: float,
              who: str, method: Method | None = None) -> int:
        """Record a calibration by ``who`` at Unix time ``when``; return its version.

        Applied only if it ``passed`` its quality check (:func:`check_quality`); a failed
        attempt is recorded and the coefficients in effect stay. Raises ValueError for a
        malformed sensor id or ``who``.
        """
        entry = HistoryEntry(version=self.version(sensor) + 1, method=method,
                             coefficients=coefficients_claim(coefficients.to_claim()),
                             when=when, who=who, passed=passed, base=self._stack(sensor))
        self._append(sensor, entry)
        return entry.version

    def rollback(self, sensor: str, *, when: float, who: str) -> Coefficients:
        """Go back to the calibration in effect before the current one (identity if it was
        the first), as a new version; rolling back again goes further back. Raises
        ValueError when ``sensor`` is uncalibrated."""
        stack = self._stack(sensor)
        if stack == 0:
            raise ValueError(f"sensor {sensor!r} has no calibration to roll back")
        target = self.entries(sensor)[stack - 1].base or 0
        coefficients = Coefficients.identity() if target == 0 else \
            Coefficients.from_claim(self.entries(sensor)[target - 1].coefficients)
        self._append(sensor, HistoryEntry(
            version=self.version(sensor) + 1, method="rollback",
            coefficients=coefficients_claim(coefficients.to_claim()), when=when, who=who,
            passed=True, restores=target))
        return coefficients

    def _in_effect(self, sensor: str) -> HistoryEntry | None:
        return next((e for e in reversed(self.entries(sensor)) if e.passed), None)

    def _stack(self, sensor: str) -> int:
        """The calibration in effect, seen through rollbacks: a version, or 0 for none."""
        entry = self._in_effect(sensor)
        if entry is None:
            return 0
        return (entry.restores or 0) if entry.method == "rollback" else entry.version

    def _append(self, sensor: str, entry: HistoryEntry) -> None:
        sensors = {**self._sensors, sensor: (*self.entries(sensor), entry)}
        document = _HistoryFile.model_validate({"sensors": sensors})  # checks the sensor id
        write_atomically(self.path, document.model_dump_json(indent=1) + "\n")
        self._sensors = sensors
