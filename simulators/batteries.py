"""Battery monitors on ptys: a Victron BMV-702 (VE.Direct text) and a JBD smart BMS.

Simulator layer, the device side of the battery monitors' serial lines. Both speak the
state of a :class:`~simulators.battery_model.BatteryModel` (the battery itself lives in
:mod:`simulators.battery_model`; its names are re-exported here). Each simulator owns a pty
(``.path``, opened by the agent like the real device, through
:class:`~simulators.pty_line.PtyLine`) and one daemon thread, stopped by ``close()`` or
leaving its ``with`` block. Faults on demand: ``noise``, ``bad_checksum_rate``, ``stuck``,
``unplug``/``plug``, and protection flags on the model; their effects are tabled in
docs/battery-protocols.md. Random choices come from ``seed``.
"""

from __future__ import annotations

import random
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import replace
from types import TracebackType
from typing import Self

from firmware_bridge.jbd_bms import (
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
from simulators.battery_model import (
    BatteryModel,
    BatterySnapshot,
    Phase,
    discharge_and_charge_curve,
)
from simulators.pty_line import PtyLine

# The model's names are re-exported: the whole battery simulation imports from this module.
__all__ = ["BatteryModel", "BatterySnapshot", "JbdBmsSim", "Phase", "VeDirectSim",
           "discharge_and_charge_curve"]

# VE.Direct alarm reason bits raised by each protection flag.
_ALARM_BITS = {"cell_undervoltage": 1, "pack_undervoltage": 1, "cell_overvoltage": 2,
               "pack_overvoltage": 2, "charge_undertemperature": 32,
               "discharge_undertemperature": 32, "charge_overtemperature": 64,
               "discharge_overtemperature": 64, "charge_overcurrent": 256,
               "discharge_overcurrent": 256, "short_circuit": 4096}
_LOW_SOC_ALARM = 4


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
