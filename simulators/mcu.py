"""A locker-bank microcontroller on a pty, speaking the firmware-bridge protocol.

The host opens ``mcu.path`` like the real UART. One daemon thread runs the sans-I/O
firmware of :mod:`simulators.mcu_firmware` (it answers frames, runs the on-time cap,
debounce, heartbeat and link-loss timers, and reports input changes, following
docs/firmware-bridge.md) and carries its bytes over the pty. This module is the I/O and
test layer around it: tests drive the physical side (``set_input``), watch the outputs
(``output``, ``output_log``, ``on_output``) and inject faults (``drop_rate``,
``corrupt_rate``, ``inject_noise``, ``reboot``, ``stuck_output``, ``unplug``/``plug``).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Self, TypeVar, overload

from simulators.mcu_firmware import EVENT_QUEUE, RECENT_COMMANDS, McuFirmware, McuStats
from simulators.pty_line import PtyLine

__all__ = ["EVENT_QUEUE", "RECENT_COMMANDS", "McuEmulator", "McuStats", "OutputChange"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class OutputChange:
    """Output ``output`` went ``on`` or off at ``at`` (``time.monotonic()``)."""

    at: float
    output: int
    on: bool


class _OnFirmware(Generic[_T]):
    """An emulator attribute kept on its :class:`McuFirmware`, read and written there."""

    def __set_name__(self, owner: type[McuEmulator], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, emulator: None, owner: type[McuEmulator]) -> Self: ...
    @overload
    def __get__(self, emulator: McuEmulator, owner: type[McuEmulator]) -> _T: ...
    def __get__(self, emulator: McuEmulator | None, owner: type[McuEmulator]) -> _T | Self:
        if emulator is None:
            return self
        value: _T = getattr(emulator._fw, self._name)
        return value

    def __set__(self, emulator: McuEmulator, value: _T) -> None:
        setattr(emulator._fw, self._name, value)


class McuEmulator:
    """The MCU: ``outputs`` solenoid/maglock drivers, ``inputs`` debounced door sensors.

    ``stuck_output(i)`` models a driver fault the firmware detects: PULSE and SET_OUTPUT on
    that output are refused with ``OUTPUT_FAULT`` and it is never energised.
    ``drop_rate``/``corrupt_rate`` apply to each frame the MCU sends and each chunk it
    reads (at these speeds a chunk is usually one frame): dropped whole, or one bit
    flipped. ``on_output`` is called from the emulator's thread on every output change.
    ``baudrate``, if given, paces both directions like a UART at that speed.
    """

    # The firmware's settings and records, read and written on it (simulators.mcu_firmware).
    n_outputs = _OnFirmware[int]()
    n_inputs = _OnFirmware[int]()
    max_on_ms = _OnFirmware[int]()
    debounce_ms = _OnFirmware[int]()
    firmware = _OnFirmware[str]()
    heartbeat_s = _OnFirmware[float]()
    link_timeout_s = _OnFirmware[float]()
    ack_timeout_s = _OnFirmware[float]()
    retries = _OnFirmware[int]()
    commands_executed = _OnFirmware[list[int]]()  # command ids acted upon, in order
    stats = _OnFirmware[McuStats]()

    def __init__(
        self,
        outputs: int = 16,
        inputs: int = 16,
        *,
        max_on_ms: int = 3000,
        debounce_ms: int = 20,
        firmware: str = "curbside-mcu-emulator 1.0",
        heartbeat_s: float = 0.5,
        link_timeout_s: float = 2.0,
        ack_timeout_s: float = 0.1,
        retries: int = 3,
        drop_rate: float = 0.0,
        corrupt_rate: float = 0.0,
        seed: int = 0,
        baudrate: int | None = None,
    ) -> None:
        self.drop_rate, self.corrupt_rate = drop_rate, corrupt_rate
        # A pty moves bytes at once; with a baud rate the firmware takes as long as a UART
        # would to receive and to send them (10 bits per byte).
        self._byte_s = 10 / baudrate if baudrate else 0.0
        self.on_output: Callable[[int, bool], None] | None = None
        self.output_log: list[OutputChange] = []
        # Boot ids and fault injection draw from one generator: a seed replays both.
        self._rng = random.Random(seed)  # noqa: S311  # fault injection, not cryptography
        self._lock = threading.RLock()
        self._line = PtyLine()
        self.path = self._line.path
        self._thread: threading.Thread | None = None
        self._closing = False
        self._actions: deque[tuple[Callable[[], None], threading.Event]] = deque()
        self._fw = McuFirmware(
            outputs, inputs, max_on_ms=max_on_ms, debounce_ms=debounce_ms, firmware=firmware,
            heartbeat_s=heartbeat_s, link_timeout_s=link_timeout_s,
            ack_timeout_s=ack_timeout_s, retries=retries, rng=self._rng,
            transmit=self._send_frame, drive=self._output_changed, now=time.monotonic())

    # --- test-facing API ----------------------------------------------------------------

    def start(self) -> McuEmulator:
        """Start the firmware thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"mcu:{self.path}",
                                            daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the firmware thread and close the pty. Idempotent."""
        with self._lock:
            self._closing = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._line.close()

    def __enter__(self) -> McuEmulator:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def boot_id(self) -> int:
        return self._fw.boot_id

    @property
    def link_up(self) -> bool:
        """The MCU's own view: its HELLO acknowledged, the host known and heard recently."""
        with self._lock:
            return self._fw.link_up

    def output(self, index: int) -> bool:
        with self._lock:
            return self._fw.output(index)

    def input(self, index: int) -> bool:
        """The debounced level the firmware reports."""
        with self._lock:
            return self._fw.input(index)

    def physical(self, index: int) -> bool:
        """The level on the pin now, before the firmware's debounce."""
        with self._lock:
            return self._fw.physical(index)

    def set_input(self, index: int, level: bool) -> None:
        """The physical level of input ``index`` changes now (debounced by the firmware)."""
        with self._lock:
            self._fw.set_input(index, level, time.monotonic())
        self._wake()

    def inject_noise(self, data: bytes) -> None:
        """Put ``data`` on the MCU -> host line between two frames."""
        self._call(lambda: self._send_raw(data))

    def reboot(self) -> None:
        """A reset: new boot id, every output off, all state lost, HELLO again."""
        self._call(lambda: self._fw.boot(time.monotonic()))

    def stuck_output(self, index: int, stuck: bool = True) -> None:
        """Output ``index``'s driver is faulted (or repaired): commands get OUTPUT_FAULT."""
        def apply() -> None:
            (self._fw.stuck.add if stuck else self._fw.stuck.discard)(index)
        self._call(apply)

    def unplug(self) -> None:
        """The MCU stops answering entirely (reads are discarded, nothing is sent)."""
        self._call(lambda: setattr(self._fw, "unplugged", True))

    def plug(self) -> None:
        """Resume reading and sending."""
        self._call(lambda: setattr(self._fw, "unplugged", False))

    # --- the thread ---------------------------------------------------------------------

    def _wake(self) -> None:
        self._line.wake()

    def _call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the firmware thread (so callbacks fire there); wait for it."""
        thread = self._thread
        if thread is None or threading.current_thread() is thread:
            with self._lock:
                fn()
            return
        done = threading.Event()
        with self._lock:
            self._actions.append((fn, done))
        self._wake()
        if not done.wait(timeout=5):
            raise TimeoutError("the emulator thread did not run the action")

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                while self._actions:
                    fn, done = self._actions.popleft()
                    fn()
                    done.set()
                self._fw.tick(time.monotonic())
                timeout = max(0.0, self._fw.next_deadline() - time.monotonic())
            data = self._line.receive(min(timeout, 0.5))
            if data is None:  # the pty is gone
                return
            if data:
                if self._byte_s:
                    time.sleep(len(data) * self._byte_s)  # the bytes arriving at line speed
                with self._lock:
                    self._on_bytes(data, time.monotonic())

    # --- the line and the drivers: the firmware's callbacks -----------------------------

    def _on_bytes(self, data: bytes, now: float) -> None:
        if self._fw.unplugged:
            return
        self._fw.receive_data(self._damage(data), now)

    def _output_changed(self, index: int, on: bool, now: float) -> None:
        self.output_log.append(OutputChange(now, index, on))
        if self.on_output is not None:
            self.on_output(index, on)

    def _send_frame(self, wire: bytes) -> None:
        self._send_raw(self._damage(wire))

    def _send_raw(self, data: bytes) -> None:
        if self._byte_s:
            time.sleep(len(data) * self._byte_s)  # the UART shifting the bytes out
        self._line.send(data)

    def _damage(self, data: bytes) -> bytes:
        roll = self._rng.random()
        if roll < self.drop_rate:
            self.stats.frames_dropped += 1
            return b""
        if roll < self.drop_rate + self.corrupt_rate and data:
            self.stats.frames_corrupted += 1
            damaged = bytearray(data)
            damaged[self._rng.randrange(len(damaged))] ^= 1 << self._rng.randrange(8)
            return bytes(damaged)
        return data
