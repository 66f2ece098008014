"""A PMS5003 and an SDS011 on ptys: the agent opens ``sim.path`` like the real UART.

Each simulator is the device side of a pseudo-terminal with a daemon thread that reads the
host's commands and answers as docs/sensors-protocols.md describes (modes, sleep and wake,
the SDS011's working period). Concentrations come from an *environment*: a function of the
simulated seconds since start returning ``pm1_0``, ``pm2_5`` and ``pm10`` in µg/m³
(:func:`pollution_episode` and its presets build one). ``speed`` runs simulated time
faster than the wall clock. Faults on demand: :meth:`noise`, ``bad_checksum_rate``,
:meth:`stuck`, :meth:`unplug`/:meth:`plug`, drawn from a seeded generator. Every public
method and property is thread-safe.
"""

from __future__ import annotations

import math
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Generic, Self, TypeVar

from firmware_bridge import pms5003, sds011
from simulators.pty_line import PtyLine

__all__ = ["Environment", "Pms5003Sim", "Sds011Sim", "diesel_truck", "pollution_episode",
           "steady", "wood_smoke_evening"]

Environment = Callable[[float], Mapping[str, float]]
_C = TypeVar("_C")
PM1_SHARE = 0.7  # PM1.0 as a share of PM2.5 when an environment gives none


def steady(pm2_5: float = 8.0, pm10: float = 12.0, pm1_0: float | None = None) -> Environment:
    """Air that does not change."""
    values = {"pm1_0": PM1_SHARE * pm2_5 if pm1_0 is None else pm1_0,
              "pm2_5": pm2_5, "pm10": pm10}
    return lambda t: values


def pollution_episode(*, baseline_pm2_5: float = 6.0, baseline_pm10: float = 10.0,
                      peak_pm2_5: float = 60.0, peak_pm10: float = 90.0, start_s: float = 60.0,
                      rise_s: float = 20.0, decay_s: float = 120.0) -> Environment:
    """A baseline, then from ``start_s`` a linear rise over ``rise_s`` to baseline + peak,
    then an exponential decay back with time constant ``decay_s``. Peaks are the excess
    over the baseline, in µg/m³; PM1.0 is 0.7 of PM2.5."""
    def shape(t: float) -> float:
        if t < start_s:
            return 0.0
        if t < start_s + rise_s:
            return (t - start_s) / rise_s
        return math.exp(-(t - start_s - rise_s) / decay_s)

    def environment(t: float) -> dict[str, float]:
        level = shape(t)
        pm2_5 = baseline_pm2_5 + peak_pm2_5 * level
        return {"pm1_0": PM1_SHARE * pm2_5, "pm2_5": pm2_5,
                "pm10": baseline_pm10 + peak_pm10 * level}
    return environment


def diesel_truck(start_s: float = 30.0) -> Environment:
    """A truck idling at the curb: a sharp puff of fine soot, gone within a minute."""
    return pollution_episode(peak_pm2_5=45.0, peak_pm10=60.0, start_s=start_s, rise_s=4.0,
                             decay_s=20.0)


def wood_smoke_evening(start_s: float = 3600.0) -> Environment:
    """Stoves lit at dusk: a slow build over an hour, fading through the night."""
    return pollution_episode(baseline_pm2_5=8.0, baseline_pm10=12.0, peak_pm2_5=90.0,
                             peak_pm10=100.0, start_s=start_s, rise_s=3600.0, decay_s=7200.0)


class _CommandFramer(Generic[_C]):
    """Fixed-size host commands out of a byte stream: hunt for ``start``, check, resync."""

    def __init__(self, start: bytes, size: int, parse: Callable[[bytes], _C | None]) -> None:
        self._start, self._size, self._parse = start, size, parse
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[_C]:
        buf, out, i = self._buffer, [], 0
        buf += data
        while True:
            j = buf.find(self._start, i)
            if j < 0:
                i = max(i, len(buf) - len(self._start) + 1)
                break
            if len(buf) - j < self._size:
                i = j
                break
            command = self._parse(bytes(buf[j:j + self._size]))
            if command is None:
                i = j + 1
                continue
            out.append(command)
            i = j + self._size
        del buf[:i]
        return out

    def clear(self) -> None:
        self._buffer.clear()


class _PtySensor(ABC, Generic[_C]):
    """The pty, the thread, the clock and the faults; subclasses speak the protocol."""

    def __init__(self, environment: Environment | None, seed: int, speed: float,
                 framer: _CommandFramer[_C], checksum_at: int) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self._environment = environment or steady()
        self._rng = random.Random(seed)  # noqa: S311  # fault injection, not cryptography
        self._speed = speed
        self._framer, self._checksum_at = framer, checksum_at  # index from the frame's end
        self._lock = threading.RLock()
        self._bad_checksum_rate = 0.0
        self._stuck: dict[str, float] | None = None
        self._last: dict[str, float] | None = None
        self._unplugged = self._closing = False
        self._frames_sent = self._frames_corrupted = self._commands = 0
        self._line = PtyLine()
        self.path = self._line.path
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}:"
                                        f"{self.path}", daemon=True)
        self._thread.start()

    # --- the public, thread-safe API ---------------------------------------------------

    @property
    def elapsed_s(self) -> float:
        """Simulated seconds since start: the ``t`` given to the environment."""
        return (time.monotonic() - self._started) * self._speed

    @property
    def frames_sent(self) -> int:
        """Frames written (readings, acks, replies), corrupted ones included."""
        with self._lock:
            return self._frames_sent

    @property
    def frames_corrupted(self) -> int:
        with self._lock:
            return self._frames_corrupted

    @property
    def commands_received(self) -> int:
        """Valid commands read (while plugged in), whatever the sensor did with them."""
        with self._lock:
            return self._commands

    @property
    def bad_checksum_rate(self) -> float:
        """The share of frames sent with a wrong checksum, 0..1."""
        with self._lock:
            return self._bad_checksum_rate

    @bad_checksum_rate.setter
    def bad_checksum_rate(self, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"bad_checksum_rate {rate} is outside 0..1")
        with self._lock:
            self._bad_checksum_rate = rate

    def noise(self, data: bytes) -> None:
        """Put ``data`` on the sensor's TX line now, between two frames (even unplugged:
        it is the line that is noisy)."""
        with self._lock:
            self._write(data)

    def stuck(self, on: bool = True) -> None:
        """Report the last concentrations again and again (``False``: follow the air)."""
        with self._lock:
            self._stuck = dict(self._last or self._air(self.elapsed_s)) if on else None

    def unplug(self) -> None:
        """Silent and deaf: nothing sent, commands lost; the sensor's state is kept."""
        with self._lock:
            self._unplugged = True
            self._framer.clear()

    def plug(self) -> None:
        with self._lock:
            self._unplugged = False
        self._wake()

    def close(self) -> None:
        """Stop the thread and close the pty. Idempotent."""
        with self._lock:
            self._closing = True
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._line.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- for the protocol subclasses (called with the lock held) ------------------------

    @abstractmethod
    def _on_command(self, command: _C, now: float) -> None:
        """A valid command from the agent, at simulated time ``now``."""

    @abstractmethod
    def _tick(self, now: float) -> float:
        """Send what is due at ``now``; return when next to be called (simulated s)."""

    def _air(self, now: float) -> dict[str, float]:
        """The concentrations the sensor measures at ``now`` (stuck ones if stuck)."""
        if self._stuck is not None:
            return dict(self._stuck)
        values = dict(self._environment(now))
        values.setdefault("pm1_0", PM1_SHARE * values["pm2_5"])
        self._last = {k: max(0.0, values[k]) for k in ("pm1_0", "pm2_5", "pm10")}
        return dict(self._last)

    def _send(self, frame: bytes) -> None:
        if self._unplugged:
            return
        if self._rng.random() < self._bad_checksum_rate:
            damaged = bytearray(frame)
            damaged[self._checksum_at] ^= 0x5A
            frame = bytes(damaged)
            self._frames_corrupted += 1
        self._frames_sent += 1
        self._write(frame)

    # --- the thread ---------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._line.send(data)

    def _wake(self) -> None:
        self._line.wake()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                now = self.elapsed_s
                due = self._tick(now) if not self._unplugged else math.inf
                timeout = min(max(0.0, (due - now) / self._speed), 0.5)
            data = self._line.receive(timeout)
            if data is None:  # the pty is gone
                return
            if data:
                with self._lock:
                    if self._unplugged:
                        continue
                    for command in self._framer.feed(data):
                        self._commands += 1
                        self._on_command(command, self.elapsed_s)


class Pms5003Sim(_PtySensor[tuple[int, int]]):
    """A PMS5003: active mode at power-up, a frame every ``active_interval_s`` (simulated;
    the real sensor takes 0.2..2.3 s); in passive mode a frame per :func:`read_passive`;
    mode and sleep commands acknowledged while awake; asleep, silent. CF=1 values equal
    the atmospheric ones; particle counts are a rough function of the masses."""

    def __init__(self, environment: Environment | None = None, seed: int = 0, *,
                 speed: float = 1.0, active_interval_s: float = 1.0) -> None:
        self._passive = self._asleep = False
        self._interval = active_interval_s
        self._next_frame = active_interval_s
        super().__init__(environment, seed, speed, _CommandFramer(
            pms5003.START, pms5003.COMMAND_BYTES, pms5003.parse_command), checksum_at=-1)

    @property
    def asleep(self) -> bool:
        with self._lock:
            return self._asleep

    @property
    def passive(self) -> bool:
        with self._lock:
            return self._passive

    def _on_command(self, command: tuple[int, int], now: float) -> None:
        cmd, data = command
        if cmd == pms5003.Command.CHANGE_MODE and data in (0, 1):
            self._passive = data == 0
            self._next_frame = now + self._interval
            if not self._asleep:
                self._send(pms5003.PmsAck(cmd, data).to_bytes())
        elif cmd == pms5003.Command.READ_PASSIVE and self._passive and not self._asleep:
            self._send(self._frame(now))
        elif cmd == pms5003.Command.SLEEP_SET and data == 0 and not self._asleep:
            self._send(pms5003.PmsAck(cmd, data).to_bytes())
            self._asleep = True
        elif cmd == pms5003.Command.SLEEP_SET and data == 1 and self._asleep:
            self._asleep = False  # no acknowledgement: the fan spins up
            self._next_frame = now + self._interval

    def _tick(self, now: float) -> float:
        if self._passive or self._asleep:
            return math.inf
        if now >= self._next_frame:
            self._send(self._frame(now))
            self._next_frame = max(self._next_frame + self._interval, now)
        return self._next_frame

    def _frame(self, now: float) -> bytes:
        air = self._air(now)
        pm1, pm25, pm10 = (min(round(air[k]), 0xFFFF) for k in ("pm1_0", "pm2_5", "pm10"))
        counts, floor = [], 0xFFFF  # per 0.1 L, above 0.3/0.5/1/2.5/5/10 µm: never rising
        for count in (150 * pm1 + 30 * pm25, 45 * pm1 + 10 * pm25, 8 * pm25,
                      pm25 + pm10 // 2, pm10 // 5, pm10 // 20):
            floor = min(floor, count)
            counts.append(floor)
        return pms5003.PmsFrame(pm1, pm25, pm10, pm1, pm25, pm10, *counts).to_bytes()


class Sds011Sim(_PtySensor[sds011.SdsCommand]):
    """An SDS011 with id ``device_id``: active reporting (a reading every simulated
    second) at power-up; answers every command of [SDS-CP] section 3 sent to its id or to
    FF FF, asleep too; with a working period of n minutes it works 30 s then sleeps
    n * 60 - 30 s, and in active mode reports once at the end of each work phase. Asleep
    (by command or period) it does not answer queries."""

    WORK_PHASE_S = 30.0

    def __init__(self, environment: Environment | None = None, seed: int = 0, *,
                 speed: float = 1.0, device_id: int = 0xA160,
                 firmware: tuple[int, int, int] = (15, 7, 10)) -> None:
        self._device_id, self._firmware = device_id, firmware
        self._query_mode, self._working, self._period_min = False, True, 0
        self._cycle_start, self._next_report = 0.0, 1.0
        super().__init__(environment, seed, speed, _CommandFramer(
            bytes([sds011.HEAD, sds011.COMMAND]), sds011.COMMAND_BYTES, sds011.parse_command),
            checksum_at=-2)

    @property
    def asleep(self) -> bool:
        with self._lock:
            return self._asleep_at(self.elapsed_s)

    @property
    def device_id(self) -> int:
        with self._lock:
            return self._device_id

    @property
    def query_mode(self) -> bool:
        with self._lock:
            return self._query_mode

    @property
    def work_period(self) -> int:
        with self._lock:
            return self._period_min

    def _asleep_at(self, now: float) -> bool:
        if not self._working:
            return True
        if self._period_min == 0:
            return False
        return (now - self._cycle_start) % (self._period_min * 60) >= self.WORK_PHASE_S

    def _restart_cycle(self, now: float) -> None:
        self._cycle_start = now
        self._next_report = now + (self.WORK_PHASE_S if self._period_min else 1.0)

    def _on_command(self, command: sds011.SdsCommand, now: float) -> None:
        if command.device_id not in (self._device_id, sds011.ALL_DEVICES):
            return
        code, (is_set, value) = command.command, command.data[:2]
        if code == sds011.Command.QUERY_DATA:
            if not self._asleep_at(now):
                self._send(self._reading(now))
            return
        if code == sds011.Command.REPORTING_MODE and value in (0, 1):
            self._query_mode = bool(value) if is_set else self._query_mode
            self._reply(code, is_set, int(self._query_mode))
        elif code == sds011.Command.SLEEP_WORK and value in (0, 1):
            if is_set and self._working != bool(value):
                self._working = bool(value)
                self._restart_cycle(now)
            self._reply(code, is_set, int(not self._asleep_at(now)))
        elif code == sds011.Command.WORKING_PERIOD and value <= sds011.MAX_WORK_PERIOD:
            if is_set:
                self._period_min = value
                self._restart_cycle(now)
            self._reply(code, is_set, self._period_min)
        elif code == sds011.Command.SET_DEVICE_ID:
            self._device_id = int.from_bytes(command.data[10:12], "big")
            self._reply(code, 0, 0)
        elif code == sds011.Command.FIRMWARE_VERSION:
            self._send(sds011.SdsReply(code, bytes(self._firmware), self._device_id).to_bytes())

    def _reply(self, code: int, is_set: int, value: int) -> None:
        self._send(sds011.SdsReply(code, bytes([is_set, value, 0]), self._device_id).to_bytes())

    def _tick(self, now: float) -> float:
        if not self._working:
            return math.inf
        if now >= self._next_report:
            if not self._query_mode:
                self._send(self._reading(now))
            step = self._period_min * 60 if self._period_min else 1.0
            self._next_report += step * max(1, math.ceil((now - self._next_report) / step))
        return self._next_report

    def _reading(self, now: float) -> bytes:
        air = self._air(now)
        return sds011.SdsReading(min(round(air["pm2_5"], 1), 999.9),
                                 min(round(air["pm10"], 1), 999.9), self._device_id).to_bytes()
