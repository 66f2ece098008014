"""The maintainers' calibration workflow, and the device-signed records it produces.

A calibration request names the sensor, the method (``zero``, ``span`` or
``colocation``), the reference values and the maintainer's badge. The badge must verify
and carry ``calibrate:<sensor>`` (or ``calibrate:*``), under the same rules as a scan
(denylist, lifetime, trusted clock, windows). The sensor's most recent raw readings are
paired with the references, coefficients fitted (:mod:`edge.calibration`), checked
against the tolerance, applied only if they pass, kept in the history; and every attempt,
pass or fail, becomes a ``curbside-calibration+jwt`` record signed with the device key,
recorded as a ``sensor.calibrated`` audit event. Reached on site through the control
socket (``curbside calibrate``) and from the platform through the signed ``calibrate``
command. See docs/calibration.md.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from edge.access import AccessPolicy
from edge.calibration import (
    CalibrationHistory,
    Coefficients,
    check_quality,
    fit_colocation,
    fit_span,
    fit_zero,
)
from edge.clock import Reading
from edge.device_key import DeviceKey
from edge.events import EventClass
from edge.sensors import SensorMonitor
from provisioning.records import MAX_POINTS, sign_calibration

Record = Callable[[str, dict[str, Any], EventClass], Awaitable[object]]
METRIC = "pm2_5"  # the channel fitted; the coefficients apply to every PM channel
DEFAULT_SAMPLES = 5
MIN_SAMPLES = 3
DEFAULT_TOLERANCE = 2.0  # µg/m³


class CalibrationRefused(ValueError):
    """A calibration that cannot be run: the message says why."""


class Maintenance:
    """Runs calibrations for the agent's sensors."""

    def __init__(self, *, device: str, site: str, key: DeviceKey, history: CalibrationHistory,
                 sensors: Mapping[str, SensorMonitor], policy: Callable[[], AccessPolicy],
                 clock: Callable[[], Reading], record: Record) -> None:
        self._device, self._site, self._key = device, site, key
        self._history = history
        self._sensors = sensors
        self._policy = policy
        self._clock = clock
        self._record = record

    async def calibrate(self, request: Mapping[str, Any],
                        operator: str | None = None) -> dict[str, Any]:
        """Run one calibration; return its outcome and the signed record.

        ``operator`` is set for a signed platform command (the platform is the authority);
        otherwise ``request["badge"]`` must be a maintainer's badge for this sensor.
        """
        sensor_id = str(request.get("sensor", ""))
        monitor = self._sensors.get(sensor_id)
        if monitor is None:
            raise CalibrationRefused(f"no sensor {sensor_id!r} (known: "
                                     f"{', '.join(sorted(self._sensors)) or 'none'})")
        who = self._authorise(request, sensor_id, operator)
        method = request.get("method")
        rollback = request.get("rollback", False)
        if not isinstance(rollback, bool):
            raise CalibrationRefused("rollback must be true or false")
        if rollback:
            return await self._rollback(sensor_id, who)
        if "stale" in monitor.health.problems:
            raise CalibrationRefused(f"{sensor_id} is stale: no recent readings to calibrate")
        tolerance = _number(request.get("tolerance", DEFAULT_TOLERANCE), "tolerance")
        if tolerance < 0:
            raise CalibrationRefused("tolerance must not be negative")
        if request.get("model", "linear") not in ("linear", "piecewise"):
            raise CalibrationRefused("model must be linear or piecewise")
        raw, reference = self._pairs(monitor, method, request)
        ceiling = 10 * monitor.config.max_ugm3
        if not all(0 <= r <= ceiling for r in reference):
            raise CalibrationRefused(f"reference values must be within 0..{ceiling:g} µg/m³")
        before = self._history.current(sensor_id)
        try:
            after = self._fit(method, raw, reference, before, request)
        except ValueError as exc:
            raise CalibrationRefused(f"cannot fit: {exc}") from exc
        quality = check_quality(after, raw, reference, tolerance)
        version = self._history.version(sensor_id) + 1  # signed first: a record that cannot
        record = sign_calibration(  # be signed leaves the history untouched
            self._key.key, kid=self._key.kid, device=self._device, site=self._site,
            now=int(self._clock().ts), maintainer=who["member"], badge_id=who["badge_id"],
            sensor=sensor_id, sensor_kind=monitor.config.kind, method=str(method),
            reference=list(reference), raw=list(raw), before=before, after=after,
            residuals=list(quality.residuals), tolerance=tolerance, passed=quality.passed,
            version=version)
        self._history.apply(sensor_id, after, who=who["member"], passed=quality.passed,
                            when=self._clock().ts, method=method)
        outcome = {"sensor": sensor_id, "method": method, "passed": quality.passed,
                   "version": version, "rmse": round(quality.rmse, 3),
                   "max_residual": round(quality.max_abs, 3), "applied": quality.passed,
                   "coefficients": (after if quality.passed else before).to_claim()}
        await self._record("sensor.calibrated", {**outcome, **who, "record": record},
                           EventClass.AUDIT)
        return {**outcome, "record": record}

    def _authorise(self, request: Mapping[str, Any], sensor: str,
                   operator: str | None) -> dict[str, str]:
        if operator is not None:
            return {"member": operator, "badge_id": "remote", "via": "remote"}
        token = request.get("badge")
        if not isinstance(token, str) or not token:
            raise CalibrationRefused("a maintainer's badge is needed (badge)")
        decision = self._policy().authorise(token, now=self._clock(),
                                            what=f"calibrate:{sensor}",
                                            allowed=lambda b: b.may_calibrate(sensor))
        if not decision.granted or decision.badge is None:
            raise CalibrationRefused(f"{decision.reason.value}: this badge may not "
                                     f"calibrate {sensor}")
        return {"member": decision.badge.member, "badge_id": decision.badge.badge_id}

    def _pairs(self, monitor: SensorMonitor, method: Any,
               request: Mapping[str, Any]) -> tuple[list[float], list[float]]:
        """The most recent raw readings, paired with the reference values."""
        recent = [r.values[METRIC] for r in monitor.recent if METRIC in r.values]
        if method in ("zero", "span"):
            count = request.get("samples", DEFAULT_SAMPLES)
            if isinstance(count, bool) or not isinstance(count, int) \
                    or not MIN_SAMPLES <= count <= MAX_POINTS:
                raise CalibrationRefused(f"samples must be an integer in {MIN_SAMPLES}.."
                                         f"{MAX_POINTS}")
            value = 0.0 if method == "zero" else _number(request.get("reference"), "reference")
            reference = [value] * count
        elif method == "colocation":
            given = request.get("reference")
            if not isinstance(given, list) or not MIN_SAMPLES <= len(given) <= MAX_POINTS:
                raise CalibrationRefused(f"co-location needs a list of {MIN_SAMPLES} to "
                                         f"{MAX_POINTS} reference values, one per recent "
                                         "reading, oldest first")
            reference = [_number(v, "reference") for v in given]
        else:
            raise CalibrationRefused("method must be zero, span or colocation")
        if len(recent) < len(reference):
            raise CalibrationRefused(f"only {len(recent)} recent readings of {METRIC}; "
                                     f"{len(reference)} are needed")
        return recent[-len(reference):], reference

    @staticmethod
    def _fit(method: Any, raw: list[float], reference: list[float], before: Coefficients,
             request: Mapping[str, Any]) -> Coefficients:
        if method == "zero":
            return fit_zero(raw, before)
        if method == "span":
            return fit_span(raw, reference, before)
        model = request.get("model", "linear")
        return fit_colocation(raw, reference, model=model)

    async def _rollback(self, sensor: str, who: dict[str, str]) -> dict[str, Any]:
        try:
            back = self._history.rollback(sensor, who=who["member"], when=self._clock().ts)
        except ValueError as exc:
            raise CalibrationRefused(str(exc)) from exc
        outcome = {"sensor": sensor, "rolled_back": True, "coefficients": back.to_claim()}
        await self._record("sensor.calibration_rolled_back", {**outcome, **who},
                           EventClass.AUDIT)
        return outcome


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CalibrationRefused(f"{name} must be a finite number, got {value!r}")
    return float(value)


