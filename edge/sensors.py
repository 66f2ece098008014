"""Curb sensors: sampling on an interval with the fan asleep in between, calibration,
per-minute aggregates as telemetry, and health events.

One :class:`SensorMonitor` task per configured sensor (``sensor:<id>``). Each sample: wake
the sensor, let the fan run ``warmup_s`` (readings are not stable before), ask for a
reading (PMS5003 passive read, SDS011 query), put it back to sleep (``duty_cycle``:
spares the fan, whose life is the sensor's), apply the sensor's current calibration and
fold the result into the minute's aggregate. Raw readings are kept (``recent``) for the
maintainers' calibration. Closed minutes go out as ``sensor.minute`` telemetry; health
changes as ``sensor.health`` (alarm when a problem starts, state when it clears).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge.backoff import backoff_delay
from edge.calibration import CalibrationHistory
from edge.clock import Reading
from edge.config import SensorConfig
from edge.events import EventClass
from edge.sensor_stats import HealthChange, MinuteAggregator, SensorHealth
from firmware_bridge import pms5003, sds011
from firmware_bridge.serial_port import AsyncSerialPort, SerialPortClosed, SerialPortError

log = logging.getLogger(__name__)

RECENT_READINGS = 600
Record = Callable[[str, dict[str, Any], EventClass], Awaitable[object]]


class _Decoder(Protocol):
    errors: dict[str, int]
    frames: int

    def feed(self, data: bytes) -> list[Any]: ...


@dataclass(frozen=True)
class Driver:
    """How to talk to one kind of sensor: commands, decoder, and the reading's values."""

    baudrate: int
    setup: tuple[bytes, ...]  # at every (re)open: passive / query mode
    wake: bytes
    request: bytes
    sleep: bytes
    decoder: Callable[[], _Decoder]
    reading: type


DRIVERS: dict[str, Driver] = {
    "pms5003": Driver(9600, (pms5003.passive_mode(),), pms5003.wake(), pms5003.read_passive(),
                      pms5003.sleep(), pms5003.Pms5003Decoder, pms5003.PmsFrame),
    "sds011": Driver(9600, (sds011.query_mode(),), sds011.work(), sds011.query(),
                     sds011.sleep(), sds011.Sds011Decoder, sds011.SdsReading),
}


@dataclass(frozen=True)
class RawReading:
    """One sample before calibration."""

    ts: float
    values: dict[str, float]


class SensorMonitor:
    """Samples one sensor for ever (reopening its port with backoff); cancel to stop."""

    def __init__(self, config: SensorConfig, *, clock: Callable[[], Reading], record: Record,
                 calibration: CalibrationHistory) -> None:
        self.config = config
        self.driver = DRIVERS[config.kind]
        self._clock = clock
        self._record = record
        self._calibration = calibration
        self.recent: deque[RawReading] = deque(maxlen=RECENT_READINGS)
        self.latest: dict[str, float] | None = None  # calibrated
        self.samples = 0
        self._aggregate = MinuteAggregator(config.aggregate_s)
        self.health = SensorHealth(
            stale_after_s=config.stale_after_s or 3 * config.interval_s + config.warmup_s,
            stuck_after=config.stuck_after,
            ranges={m: (0.0, config.max_ugm3) for m in ("pm1_0", "pm2_5", "pm10")},
            max_error_rate=config.max_error_rate)
        self._readings: asyncio.Queue[Any] = asyncio.Queue(maxsize=16)
        self._counted = (0, 0)

    def status(self) -> dict[str, Any]:
        """For the state snapshot."""
        return {"kind": self.config.kind, "latest": self.latest, "samples": self.samples,
                "problems": sorted(self.health.problems),
                "calibration": self._calibration.current(self.config.id).to_claim()}

    async def run(self) -> None:
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                async with AsyncSerialPort(self.config.url,
                                           baudrate=self.driver.baudrate) as port:
                    attempt = 0
                    await self._sample_forever(port, started)
            except (SerialPortError, SerialPortClosed) as exc:
                delay = backoff_delay(attempt, 1.0, 60.0)
                attempt += 1
                log.warning("sensor %s on %s: %s; retry in %.1fs", self.config.id,
                            self.config.url, exc, delay)
                await self._health(self.health.tick(time.monotonic(), since=started))
                await asyncio.sleep(delay)

    async def _sample_forever(self, port: AsyncSerialPort, started: float) -> None:
        decoder = self.driver.decoder()
        self._counted = (0, 0)  # a fresh decoder counts from zero
        reader = asyncio.ensure_future(self._decode(port, decoder))
        try:
            for command in self.driver.setup:
                port.write(command)
            if not self.config.duty_cycle:  # it may have been left asleep
                port.write(self.driver.wake)
            while True:
                if reader.done():  # the port went away under the reader
                    raise SerialPortClosed(f"{self.config.url}: the port went away")
                await self._sample_once(port)
                await self._count(decoder)
                await self._health(self.health.tick(time.monotonic(), since=started))
                await self._flush()
                await asyncio.sleep(max(0.0, self.config.interval_s
                                        - (self.config.warmup_s if self.config.duty_cycle
                                           else 0.0)))
        finally:
            with contextlib.suppress(SerialPortClosed):
                port.write(self.driver.sleep)  # left asleep: the fan is spared meanwhile
            reader.cancel()
            # gather, not suppress(CancelledError): a cancellation of this task that
            # arrives meanwhile must not be swallowed with the child's
            await asyncio.gather(reader, return_exceptions=True)

    async def _decode(self, port: AsyncSerialPort, decoder: _Decoder) -> None:
        async for chunk in port:
            for message in decoder.feed(chunk):
                if isinstance(message, self.driver.reading):
                    with contextlib.suppress(asyncio.QueueFull):
                        self._readings.put_nowait(message)

    async def _sample_once(self, port: AsyncSerialPort) -> None:
        if self.config.duty_cycle:
            port.write(self.driver.wake)
            await asyncio.sleep(self.config.warmup_s)
        while not self._readings.empty():  # anything before the request is stale
            self._readings.get_nowait()
        port.write(self.driver.request)
        frame = None
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the reading does, and this task would never stop.
            async with asyncio.timeout(self.config.read_timeout_s):
                frame = await self._readings.get()
        except TimeoutError:
            log.warning("sensor %s: no reading within %.1fs", self.config.id,
                        self.config.read_timeout_s)
        if self.config.duty_cycle:
            port.write(self.driver.sleep)
        if frame is not None:
            await self.add(frame.values())

    async def add(self, raw: dict[str, float]) -> None:
        """A raw reading: kept, checked, calibrated, aggregated."""
        now = self._clock()
        self.samples += 1
        self.recent.append(RawReading(now.ts, dict(raw)))
        await self._health(self.health.reading(time.monotonic(), raw))
        coefficients = self._calibration.current(self.config.id)
        calibrated = {k: coefficients.apply(v) for k, v in raw.items()}
        # A calibration gone wild must not put Infinity into the telemetry.
        self.latest = {k: round(v, 2) for k, v in calibrated.items() if math.isfinite(v)}
        for minute in self._aggregate.add(now.ts, self.latest):
            await self._record("sensor.minute", {"sensor": self.config.id, **minute},
                               EventClass.TELEMETRY)

    async def _flush(self) -> None:
        for minute in self._aggregate.flush(self._clock().ts):
            await self._record("sensor.minute", {"sensor": self.config.id, **minute},
                               EventClass.TELEMETRY)

    async def _count(self, decoder: _Decoder) -> None:
        # Frame-level errors only: "garbage" counts bytes skipped, not frames.
        good = decoder.frames
        bad = sum(n for kind, n in decoder.errors.items() if kind != "garbage")
        last_good, last_bad = self._counted
        self._counted = (good, bad)
        await self._health(self.health.frames(good - last_good, bad - last_bad))

    async def _health(self, changes: list[HealthChange]) -> None:
        for change in changes:
            log.log(logging.WARNING if change.active else logging.INFO, "sensor %s %s %s: %s",
                    self.config.id, change.problem,
                    "started" if change.active else "cleared", change.detail)
            await self._record("sensor.health", {
                "sensor": self.config.id, "problem": change.problem,
                "state": "started" if change.active else "cleared", "detail": change.detail},
                EventClass.ALARM if change.active else EventClass.STATE)
