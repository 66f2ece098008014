"""A simulated LiFePO4 battery pack: the state the simulated battery monitors report.

Simulator layer, pure: no pty, no thread of its own, no I/O. Tests set a
:class:`BatteryModel` field by field, or have it follow a script
(``discharge_and_charge_curve``: a loan under load, the return, a charge) that it
integrates on demand against ``time.monotonic()``. One lock guards it because the monitors
of :mod:`simulators.batteries` read it from their own threads; :meth:`BatteryModel.snapshot`
hands them a consistent :class:`BatterySnapshot`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, Self, TypeVar, overload

from firmware_bridge.jbd_bms import PROTECTION_BITS

__all__ = ["BatteryModel", "BatterySnapshot", "Phase", "discharge_and_charge_curve"]

# LiFePO4 open-circuit voltage per cell against state of charge (typical datasheet curve).
_OCV = ((0.0, 2.80), (5.0, 3.05), (10.0, 3.20), (20.0, 3.25), (40.0, 3.28), (60.0, 3.30),
        (80.0, 3.32), (90.0, 3.34), (95.0, 3.37), (100.0, 3.45))
_CELL_OHMS = 0.004
_CHARGE_BLOCKING = {"cell_overvoltage", "pack_overvoltage", "charge_overtemperature",
                    "charge_undertemperature", "charge_overcurrent", "front_end_ic_error",
                    "mos_software_lock"}
_DISCHARGE_BLOCKING = {"cell_undervoltage", "pack_undervoltage", "discharge_overtemperature",
                       "discharge_undertemperature", "discharge_overcurrent", "short_circuit",
                       "front_end_ic_error", "mos_software_lock"}
_T = TypeVar("_T")


def _ocv(soc_pct: float) -> float:
    for (s0, v0), (s1, v1) in itertools.pairwise(_OCV):
        if soc_pct <= s1:
            return v0 + (v1 - v0) * (max(soc_pct, s0) - s0) / (s1 - s0)
    return _OCV[-1][1]


@dataclass(frozen=True, slots=True)
class Phase:
    """``duration_s`` (battery time) at ``current_a`` (positive charging)."""

    name: str
    duration_s: float
    current_a: float


def discharge_and_charge_curve(*, load_a: float = 15.0, loan_s: float = 3 * 3600.0,
                               returned_s: float = 600.0, charge_a: float = 20.0,
                               charge_s: float = 3 * 3600.0) -> tuple[Phase, ...]:
    """A loan: discharge at ``load_a`` for ``loan_s``, idle on return, then a charge."""
    return (Phase("loan", loan_s, -abs(load_a)), Phase("returned", returned_s, 0.0),
            Phase("charge", charge_s, abs(charge_a)))


@dataclass(frozen=True, slots=True)
class BatterySnapshot:
    """The battery at one instant, consistent (taken under the model's lock)."""

    capacity_ah: float
    soc_pct: float
    current_a: float
    temperature_c: float | None
    cells_v: tuple[float, ...]
    consumed_ah: float
    drawn_ah: float  # charge drawn in all, for the cycle count and the history
    cycles: int
    protection: frozenset[str]
    phase: str | None
    deepest_ah: float
    min_voltage_v: float
    max_voltage_v: float

    @property
    def voltage_v(self) -> float:
        return sum(self.cells_v)

    @property
    def charge_fet(self) -> bool:
        return not self.protection & _CHARGE_BLOCKING

    @property
    def discharge_fet(self) -> bool:
        return not self.protection & _DISCHARGE_BLOCKING


class _Field(Generic[_T]):
    """A model attribute kept on its current snapshot, read and written under the lock."""

    def __init__(self, convert: Callable[[Any], _T]) -> None:
        self._convert = convert

    def __set_name__(self, owner: type[BatteryModel], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, model: None, owner: type[BatteryModel]) -> Self: ...
    @overload
    def __get__(self, model: BatteryModel, owner: type[BatteryModel]) -> _T: ...
    def __get__(self, model: BatteryModel | None, owner: type[BatteryModel]) -> _T | Self:
        if model is None:
            return self
        value: _T = getattr(model.snapshot(), self._name)
        return value

    def __set__(self, model: BatteryModel, value: _T) -> None:
        model._update(**{self._name: self._convert(value)})


def _percent(value: float) -> float:
    return min(100.0, max(0.0, float(value)))


def _cells(volts: tuple[float, ...]) -> tuple[float, ...]:
    if not volts:
        raise ValueError("a battery has at least one cell")
    return tuple(float(v) for v in volts)


class BatteryModel:
    """A LiFePO4 pack. Every public attribute is read and written under one lock.

    Without a script the values stay as tests set them. With one (:meth:`play`),
    :meth:`advance` integrates its current (coulomb counting, ``speed`` battery seconds per
    second of ``time.monotonic()``) and derives the cell voltages from the state of charge
    and the current; an empty battery raises ``cell_undervoltage`` (discharge FET off, no
    more discharge), a full one stops the charge, and a protection flag stops the current
    its FET blocks. A cycle is counted per capacity's worth of charge drawn.
    """

    capacity_ah = _Field[float](float)
    soc_pct = _Field[float](_percent)
    current_a = _Field[float](float)
    temperature_c = _Field[float | None](lambda v: None if v is None else float(v))
    consumed_ah = _Field[float](float)
    cycles = _Field[int](int)
    cells_v = _Field[tuple[float, ...]](_cells)
    protection = _Field[frozenset[str]](frozenset)

    def __init__(self, *, capacity_ah: float = 100.0, cell_count: int = 4,
                 soc_pct: float = 80.0, temperature_c: float | None = 20.0,
                 current_a: float = 0.0, cycles: int = 0) -> None:
        self._lock = threading.RLock()
        pack_v = _ocv(soc_pct) * cell_count
        self._snap = BatterySnapshot(
            capacity_ah=capacity_ah, soc_pct=soc_pct, current_a=current_a,
            temperature_c=temperature_c, cells_v=(_ocv(soc_pct),) * cell_count,
            consumed_ah=0.0, drawn_ah=0.0, cycles=cycles, protection=frozenset(),
            phase=None, deepest_ah=0.0, min_voltage_v=pack_v, max_voltage_v=pack_v)
        self._script: tuple[Phase, ...] = ()
        self._speed = 1.0
        self._t0 = self._t_last = 0.0

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._snap = replace(self._snap, **changes)

    @property
    def cell_count(self) -> int:
        return len(self.cells_v)

    @property
    def voltage_v(self) -> float:
        return self.snapshot().voltage_v

    @voltage_v.setter
    def voltage_v(self, volts: float) -> None:
        """Sets every cell to an equal share of ``volts``."""
        with self._lock:
            self.cells_v = (volts / self.cell_count,) * self.cell_count

    def set_protection(self, name: str, on: bool = True) -> None:
        """Raise (or clear) protection flag ``name`` (docs/battery-protocols.md table)."""
        if name not in PROTECTION_BITS:
            raise ValueError(f"unknown protection flag {name!r}")
        with self._lock:
            flags = self._snap.protection
            self._update(protection=flags | {name} if on else flags - {name})

    def play(self, script: tuple[Phase, ...], *, speed: float = 1.0,
             start: float | None = None) -> None:
        """Follow ``script`` from ``start`` (default now), ``speed`` times faster than life."""
        with self._lock:
            self._script, self._speed = script, speed
            self._t0 = self._t_last = time.monotonic() if start is None else start

    @property
    def phase(self) -> str | None:
        """The script's phase at the last :meth:`advance` (None: no script, or it ended)."""
        return self.snapshot().phase

    def advance(self, now: float | None = None) -> None:
        """Bring the scripted battery up to ``now`` (``time.monotonic()``); idempotent,
        so several readers may call it. Without a script, nothing changes."""
        with self._lock:
            now = time.monotonic() if now is None else now
            if not self._script or now <= self._t_last:
                return
            elapsed = (self._t_last - self._t0) * self._speed
            target = (now - self._t0) * self._speed
            self._t_last = now
            while elapsed < target:
                phase, left = self._phase_at(elapsed)
                step = min(target - elapsed, left, 60.0)
                self._integrate(phase, step)
                elapsed += step

    def _phase_at(self, t: float) -> tuple[Phase | None, float]:
        for phase in self._script:
            if t < phase.duration_s:
                return phase, phase.duration_s - t
            t -= phase.duration_s
        return None, float("inf")

    def _integrate(self, phase: Phase | None, dt_s: float) -> None:
        s = self._snap
        amps = phase.current_a if phase else 0.0
        full = s.soc_pct >= 100.0
        if (amps < 0 and not s.discharge_fet) or (amps > 0 and (not s.charge_fet or full)):
            amps = 0.0
        flags = s.protection - {"cell_undervoltage"} if amps > 0 else s.protection
        soc = min(100.0, max(0.0, s.soc_pct + amps * dt_s / 36 / s.capacity_ah))
        if soc <= 0.0 and amps < 0:
            flags |= {"cell_undervoltage"}  # the BMS cuts the load off
        consumed = s.consumed_ah + amps * dt_s / 3600
        drawn = s.drawn_ah + max(0.0, -amps) * dt_s / 3600
        cells = tuple(_ocv(soc) + amps * _CELL_OHMS + 0.002 * (i % 3 - 1)
                      for i in range(len(s.cells_v)))
        new_cycles = int(drawn // s.capacity_ah) - int(s.drawn_ah // s.capacity_ah)
        self._snap = replace(
            s, soc_pct=soc, current_a=amps, cells_v=cells, consumed_ah=consumed,
            drawn_ah=drawn, cycles=s.cycles + new_cycles, protection=flags,
            phase=phase.name if phase else None, deepest_ah=min(s.deepest_ah, consumed),
            min_voltage_v=min(s.min_voltage_v, sum(cells)),
            max_voltage_v=max(s.max_voltage_v, sum(cells)))

    def snapshot(self, now: float | None = None) -> BatterySnapshot:
        """:meth:`advance` to ``now``, then the battery's state."""
        with self._lock:
            self.advance(now)
            return self._snap
