"""Battery banks: their monitors read over serial, readings as telemetry, the bay gate,
returns and swaps, and the charger relay.

One :class:`BatteryMonitor` task per configured battery (``battery:<id>``): a JBD BMS is
polled (basic info, then cell voltages) every ``interval_s``; a Victron VE.Direct device
streams its blocks by itself. Each reading becomes the battery's :class:`BatteryState`
and, at most once per interval, a ``battery.reading`` telemetry event. A monitor silent
for ``absent_after_s`` means the battery is gone (``battery.taken``); readings again mean
one is back (``battery.returned``, audit, with its state), and when a member's loan of
that bay preceded it, the agent signs a swap record. The charger relay (optional) follows
:func:`edge.battery_state.charger_should_run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge.backoff import backoff_delay
from edge.battery_state import BatteryState, charger_should_run, readiness
from edge.config import BatteryConfig
from edge.events import EventClass
from firmware_bridge import jbd_bms, vedirect
from firmware_bridge.serial_port import AsyncSerialPort, SerialPortClosed, SerialPortError

log = logging.getLogger(__name__)

Record = Callable[[str, dict[str, Any], EventClass], Awaitable[object]]
Returned = Callable[["BatteryMonitor", BatteryState], Awaitable[None]]
BAUD = {"jbd": 9600, "vedirect": 19200}


class BatteryMonitor:
    """One battery's monitor, for ever (reopening its port with backoff); cancel to stop."""

    def __init__(self, config: BatteryConfig, *, record: Record,
                 on_returned: Returned | None = None, charger: Any = None) -> None:
        self.config = config
        self._record = record
        self._on_returned = on_returned
        self._charger = charger  # a gpiozero DigitalOutputDevice, or None
        self.state: BatteryState | None = None
        self.present = False
        self._published = 0.0
        self._changed = asyncio.Event()
        self._seen = False  # the first reading after start is not a return
        self._ve_fields: dict[str, str] = {}

    def attach_charger(self, relay: Any) -> None:
        """The charger relay (a gpiozero output device, off), driven from now on."""
        self._charger = relay

    def readiness(self) -> list[str]:
        """What keeps this battery from a loan now (empty: it may go). A battery taken,
        or a reading older than three intervals, is no battery to lend."""
        fresh = min(self.config.absent_after_s, 3 * self.config.interval_s)
        config = self.config.model_copy(update={"absent_after_s": fresh})
        return readiness(self.state if self.present else None, config, time.monotonic())

    def status(self) -> dict[str, Any]:
        """For the state snapshot."""
        out: dict[str, Any] = {"kind": self.config.kind, "present": self.present,
                               "compartment": self.config.compartment,
                               "ready": not self.readiness(), "problems": self.readiness()}
        if self.state is not None:
            out["reading"] = self.state.fields()
        if self._charger is not None:
            out["charging"] = bool(self._charger.value)
        return out

    async def run(self) -> None:
        attempt = 0
        watch = asyncio.ensure_future(self._watch_presence())
        try:
            while True:
                try:
                    async with AsyncSerialPort(self.config.url,
                                               baudrate=BAUD[self.config.kind]) as port:
                        attempt = 0
                        await (self._poll_jbd(port) if self.config.kind == "jbd"
                               else self._stream_vedirect(port))
                except (SerialPortError, SerialPortClosed) as exc:
                    delay = backoff_delay(attempt, 1.0, 60.0)
                    attempt += 1
                    log.warning("battery %s on %s: %s; retry in %.1fs", self.config.id,
                                self.config.url, exc, delay)
                    await asyncio.sleep(delay)
        finally:
            watch.cancel()
            # gather, not suppress(CancelledError): a cancellation of this task that
            # arrives meanwhile must not be swallowed with the child's
            await asyncio.gather(watch, return_exceptions=True)
            if self._charger is not None:
                self._charger.off()

    async def _poll_jbd(self, port: AsyncSerialPort) -> None:
        decoder = jbd_bms.JbdDecoder()
        messages: asyncio.Queue[Any] = asyncio.Queue(maxsize=16)
        reader = asyncio.ensure_future(self._decode(port, decoder, messages))
        try:
            while True:
                if reader.done():  # the port went away under the reader
                    raise SerialPortClosed(f"{self.config.url}: the port went away")
                info = await self._ask(port, jbd_bms.read_basic_info(), messages,
                                       jbd_bms.JbdBasicInfo, decoder)
                cells = await self._ask(port, jbd_bms.read_cell_voltages(), messages,
                                        jbd_bms.JbdCellVoltages, decoder)
                if info is not None:
                    await self._update(BatteryState(
                        at=time.monotonic(), voltage_v=info.voltage_v,
                        current_a=info.current_a, soc_pct=float(info.soc_pct),
                        temperatures_c=tuple(info.temperatures_c),
                        cell_min_v=None if cells is None else cells.min_v,
                        cell_max_v=None if cells is None else cells.max_v,
                        protection=frozenset(info.protection), cycles=info.cycles))
                await asyncio.sleep(self.config.interval_s)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)  # see above

    async def _ask(self, port: AsyncSerialPort, request: bytes, messages: asyncio.Queue[Any],
                   kind: type, decoder: jbd_bms.JbdDecoder) -> Any:
        """Send a request and wait for its answer; after a silence, a partial frame held
        back by the decoder (noise that looked like a header) is given up."""
        while not messages.empty():
            messages.get_nowait()
        port.write(request)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while True:
                    message = await messages.get()
                    if isinstance(message, kind):
                        return message
        for message in decoder.line_idle():
            if isinstance(message, kind):
                return message
        return None

    async def _decode(self, port: AsyncSerialPort, decoder: Any,
                      messages: asyncio.Queue[Any]) -> None:
        async for chunk in port:
            for message in decoder.feed(chunk):
                with contextlib.suppress(asyncio.QueueFull):
                    messages.put_nowait(message)

    async def _stream_vedirect(self, port: AsyncSerialPort) -> None:
        """A device with many fields sends them in several checksummed blocks: the
        latest value of every label is kept, and the state built from them all."""
        decoder = vedirect.VeDirectDecoder()
        self._ve_fields.clear()
        core_at = 0.0
        async for chunk in port:
            for message in decoder.feed(chunk):
                if isinstance(message, vedirect.VeBlock):
                    self._ve_fields.update(message.fields)
                    if not {"V", "SOC"} & message.fields.keys():
                        continue  # a history block says nothing of the battery now
                    core_at = time.monotonic()
                    merged = vedirect.VeBlock(fields=dict(self._ve_fields))
                    protection = frozenset({"alarm"}) if merged.alarm else frozenset()
                    await self._update(BatteryState(
                        at=core_at, voltage_v=merged.voltage_v,
                        current_a=merged.current_a, soc_pct=merged.soc_pct,
                        temperatures_c=() if merged.temperature_c is None
                        else (merged.temperature_c,), protection=protection))

    async def _update(self, state: BatteryState) -> None:
        self.state = state
        self._changed.set()
        if not self.present:
            self.present = True
            if not self._seen:  # found at start: not a return
                self._seen = True
                await self._record("battery.present", {"battery": self.config.id,
                                                       "compartment": self.config.compartment,
                                                       **state.fields()}, EventClass.STATE)
            else:
                await self._record("battery.returned", {
                    "battery": self.config.id, "compartment": self.config.compartment,
                    **state.fields()}, EventClass.AUDIT)
                if self._on_returned is not None:
                    await self._on_returned(self, state)
        if state.at - self._published >= self.config.interval_s:
            self._published = state.at
            await self._record("battery.reading", {"battery": self.config.id,
                                                   **state.fields()}, EventClass.TELEMETRY)
        self._drive_charger()

    def _drive_charger(self) -> None:
        if self._charger is None:
            return
        running = bool(self._charger.value)
        wanted = charger_should_run(self.state if self.present else None, self.config, running)
        if wanted != running:
            (self._charger.on if wanted else self._charger.off)()
            log.info("battery %s charger %s", self.config.id, "on" if wanted else "off")

    async def _watch_presence(self) -> None:
        """Silent for ``absent_after_s``: the battery has been taken (or unplugged)."""
        while True:
            self._changed.clear()
            try:  # asyncio.timeout: wait_for (3.11) can swallow a cancellation
                async with asyncio.timeout(self.config.absent_after_s):
                    await self._changed.wait()
            except TimeoutError:
                if self.present:
                    self.present = False
                    self._ve_fields.clear()  # the next battery's values, not these
                    self._drive_charger()
                    await self._record("battery.taken", {"battery": self.config.id,
                                                         "compartment": self.config.compartment},
                                       EventClass.STATE)
