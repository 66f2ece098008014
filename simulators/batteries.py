"""Battery monitors on ptys: a Victron BMV-702 (VE.Direct text) and a JBD smart BMS.

Both read a :class:`BatteryModel`, a battery that tests set field by field or that follows
a script (``discharge_and_charge_curve``: a loan under load, the return, a charge). Each
simulator owns a pty (``.path``, opened by the agent like the real device) and one daemon
thread, stopped by ``close()`` or leaving its ``with`` block. Faults on demand: ``noise``,
``bad_checksum_rate``, ``stuck``, ``unplug``/``plug``, and protection flags on the model;
their effects are tabled in docs/battery-protocols.md. Random choices come from ``seed``.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, overload

from firmware_bridge.jbd_bms import (
    PROTECTION_BITS,
    JbdBasicInfo,
    JbdRequest,
    JbdRequestDecoder,
    Register,
    encode_basic_info,
    encode_cell_voltages,
    encode_error,
    encode_hardware_version,
)
from firmware_bridge.vedirect import encode_block, hex_frame
from simulators.pty_line import PtyLine

__all__ = ["BatteryModel", "BatterySnapshot", "JbdBmsSim", "Phase", "VeDirectSim",
           "discharge_and_charge_curve"]

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
# VE.Direct alarm reason bits raised by each protection flag.
_ALARM_BITS = {"cell_undervoltage": 1, "pack_undervoltage": 1, "cell_overvoltage": 2,
               "pack_overvoltage": 2, "charge_undertemperature": 32,
               "discharge_undertemperature": 32, "charge_overtemperature": 64,
               "discharge_overtemperature": 64, "charge_overcurrent": 256,
               "discharge_overcurrent": 256, "short_circuit": 4096}
_LOW_SOC_ALARM = 4
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


class _PtyDevice(ABC):
    """A pty, a seeded generator, one daemon thread, and the faults both simulators share."""

    def __init__(self, model: BatteryModel | None, seed: int, name: str) -> None:
        self.model = model if model is not None else BatteryModel()
        self.bad_checksum_rate = 0.0
        self.frames_sent = 0
        self.frames_corrupted = 0
        self._rng = random.Random(seed)  # noqa: S311  # fault injection, not cryptography
        self._lock = threading.RLock()
        self._line = PtyLine()
        self.path = self._line.path
        self._stuck: BatterySnapshot | None = None
        self._unplugged = False
        self._closing = threading.Event()
        self._written: deque[bytes] = deque(maxlen=64)
        self._thread = threading.Thread(target=self._run, name=f"{name}:{self.path}",
                                        daemon=True)
        self._thread.start()

    @abstractmethod
    def _run(self) -> None:
        """The device's thread: until ``_closing`` is set."""

    @property
    def written(self) -> list[bytes]:
        """The last 64 writes to the line, oldest first (a record for tests)."""
        with self._lock:
            return list(self._written)

    def noise(self, data: bytes) -> None:
        """Put ``data`` on the line now, between two frames."""
        with self._lock:
            self._write(data)

    def stuck(self, on: bool = True) -> None:
        """Report the battery as it is now, forever (or follow it again)."""
        with self._lock:
            self._stuck = self.model.snapshot() if on else None

    def unplug(self) -> None:
        """The cable is pulled: nothing is sent, nothing is heard."""
        with self._lock:
            self._unplugged = True

    def plug(self) -> None:
        with self._lock:
            self._unplugged = False

    def _battery(self) -> BatterySnapshot:
        return self._stuck if self._stuck is not None else self.model.snapshot()

    def _corrupt(self) -> bool:
        if self._rng.random() < self.bad_checksum_rate:
            self.frames_corrupted += 1
            return True
        return False

    def _write(self, data: bytes) -> None:
        self._written.append(data)
        self._line.send(data)

    def close(self) -> None:
        """Stop the thread and close the pty. Idempotent."""
        self._closing.set()
        self._line.wake()
        self._thread.join(timeout=5)
        self._line.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class VeDirectSim(_PtyDevice):
    """A BMV-702 with a temperature sensor: every ``period_s``, its live block then its
    history block, with an asynchronous HEX frame inside a block at a ``hex_rate`` chance
    per period (always in the first). ``periods_silent`` counts periods spent unplugged."""

    def __init__(self, model: BatteryModel | None = None, *, seed: int = 0,
                 period_s: float = 1.0, hex_rate: float = 0.3) -> None:
        self.period_s, self.hex_rate = period_s, hex_rate
        self.hex_frames_sent = 0
        self.periods_silent = 0
        self._periods = 0
        self._stuck_wire: bytes | None = None
        super().__init__(model, seed, "vedirect")

    def stuck(self, on: bool = True) -> None:
        """From the next period on, the same bytes every period (or live blocks again)."""
        with self._lock:
            super().stuck(on)
            self._stuck_wire = None

    def _run(self) -> None:
        due = time.monotonic()
        while not self._closing.wait(max(0.0, due - time.monotonic())):
            with self._lock:
                due = max(due + self.period_s, time.monotonic() - self.period_s)
                if self._unplugged:
                    self.periods_silent += 1
                else:
                    self._send_period()

    def _fields(self, b: BatterySnapshot) -> tuple[dict[str, str], dict[str, str]]:
        mv, ma = round(b.voltage_v * 1000), round(b.current_a * 1000)
        reason = sum({bit for flag, bit in _ALARM_BITS.items() if flag in b.protection})
        reason |= _LOW_SOC_ALARM if b.soc_pct < 10 else 0
        left_ah = b.soc_pct / 100 * b.capacity_ah
        live = {"PID": "0x204", "V": str(mv), "I": str(ma), "P": str(round(mv * ma / 1e6)),
                "CE": str(round(b.consumed_ah * 1000)), "SOC": str(round(b.soc_pct * 10)),
                "TTG": str(round(left_ah / -b.current_a * 60)) if b.current_a < 0 else "-1"}
        if b.temperature_c is not None:
            live["T"] = str(round(b.temperature_c))
        on = "ON" if reason else "OFF"
        live |= {"Alarm": on, "Relay": on, "AR": str(reason), "BMV": "702", "FW": "0308"}
        history = {"H1": str(round(b.deepest_ah * 1000)), "H4": str(b.cycles),
                   "H6": str(round(-b.drawn_ah * 1000)),
                   "H7": str(round(b.min_voltage_v * 1000)),
                   "H8": str(round(b.max_voltage_v * 1000))}
        return live, history

    def _send_period(self) -> None:
        if self._stuck is not None and self._stuck_wire is not None:
            self.frames_sent += 2
            self._write(self._stuck_wire)  # a hung device repeats itself byte for byte
            return
        battery = self._battery()
        parts = [bytearray(encode_block(fields)) for fields in self._fields(battery)]
        for part in parts:
            if self._corrupt():
                part[-1] ^= 0x01
        wire = b"".join(parts)
        if self._periods == 0 or self._rng.random() < self.hex_rate:
            # Inside a block: after its first byte, before its checksum byte.
            first = len(parts[0])
            at = self._rng.choice([*range(1, first - 1), *range(first + 1, len(wire) - 1)])
            volts = round(battery.voltage_v * 100) & 0xFFFF
            frame = hex_frame(0xA, bytes([0x8D, 0xED, 0x00]) + volts.to_bytes(2, "little"))
            wire = wire[:at] + frame + wire[at:]
            self.hex_frames_sent += 1
        self._periods += 1
        self.frames_sent += len(parts)
        self._stuck_wire = wire if self._stuck is not None else None
        self._write(wire)


class JbdBmsSim(_PtyDevice):
    """A JBD BMS answering reads of registers 0x03, 0x04 and 0x05 (others: status 0x80).
    ``requests_received`` counts requests heard, ``requests_ignored`` those not answered
    because the BMS was unplugged."""

    def __init__(self, model: BatteryModel | None = None, *, seed: int = 0,
                 model_name: str = "JBD-SP04S034-L4S-200A-B-U") -> None:
        self.model_name = model_name
        self.requests_received = 0
        self.requests_ignored = 0
        self._requests = JbdRequestDecoder()
        super().__init__(model, seed, "jbd")

    def set_protection(self, name: str, on: bool = True) -> None:
        """Raise (or clear) a protection flag on the battery (and on a stuck answer)."""
        with self._lock:
            self.model.set_protection(name, on)
            if self._stuck is not None:
                flags = self._stuck.protection
                self._stuck = replace(self._stuck,
                                      protection=flags | {name} if on else flags - {name})

    def _run(self) -> None:
        while not self._closing.is_set():
            data = self._line.receive(0.5)
            if data is None:  # the pty is gone
                return
            if not data:
                continue
            with self._lock:
                for request in self._requests.feed(data):
                    if isinstance(request, JbdRequest):
                        self._answer(request.register, request.write)

    def _answer(self, register: int, write: bool) -> None:
        self.requests_received += 1
        if self._unplugged:
            self.requests_ignored += 1
            return
        battery = self._battery()
        if write:
            response = encode_error(register)
        elif register == Register.BASIC_INFO:
            response = encode_basic_info(self._basic_info(battery))
        elif register == Register.CELL_VOLTAGES:
            response = encode_cell_voltages([min(65.535, max(0.0, v)) for v in battery.cells_v])
        elif register == Register.HARDWARE_VERSION:
            response = encode_hardware_version(self.model_name)
        else:
            response = encode_error(register)
        if self._corrupt():
            response = response[:-3] + bytes([response[-3] ^ 0x01]) + response[-2:]
        self.frames_sent += 1
        self._write(response)

    @staticmethod
    def _basic_info(b: BatterySnapshot) -> JbdBasicInfo:
        """The register as the BMS would fill it, values held to what its fields carry."""
        def clamp(value: float, top: float, bottom: float = 0.0) -> float:
            return round(min(top, max(bottom, value)), 2)
        low = min(b.cells_v)
        balancing = sum(1 << i for i, v in enumerate(b.cells_v) if v - low > 0.010)
        temps = () if b.temperature_c is None else (b.temperature_c, b.temperature_c)
        return JbdBasicInfo(
            voltage_v=clamp(b.voltage_v, 655.35), current_a=clamp(b.current_a, 327.67, -327.68),
            remaining_ah=clamp(b.soc_pct / 100 * b.capacity_ah, 655.35),
            nominal_ah=clamp(b.capacity_ah, 655.35), cycles=min(b.cycles, 0xFFFF),
            soc_pct=round(b.soc_pct),
            protection=b.protection, charge_fet=b.charge_fet, discharge_fet=b.discharge_fet,
            cell_count=len(b.cells_v),
            temperatures_c=tuple(clamp(t, 6280.0, -273.1) for t in temps),
            production_date=(24 << 9) | (4 << 5) | 1, software_version=0x23,
            balance=balancing if b.current_a > 0 else 0)
