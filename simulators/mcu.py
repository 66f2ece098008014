"""A locker-bank microcontroller on a pty, speaking the firmware-bridge protocol.

The host opens ``mcu.path`` like the real UART. One daemon thread plays the firmware: it
reads frames, answers them, runs the on-time cap, debounce, heartbeat and link-loss
timers, and reports input changes, following docs/firmware-bridge.md and written
independently of the host's session so that each checks the other. Tests drive the
physical side (``set_input``), watch the outputs (``output``, ``output_log``,
``on_output``) and inject faults (``drop_rate``, ``corrupt_rate``, ``inject_noise``,
``reboot``, ``stuck_output``, ``unplug``/``plug``).
"""

from __future__ import annotations

import contextlib
import os
import pty
import random
import select
import threading
import time
import tty
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from firmware_bridge.bridge_codec import (
    PROTOCOL_VERSION,
    UNACKNOWLEDGED,
    Ack,
    FrameDecoder,
    FrameError,
    Heartbeat,
    Hello,
    InputChanged,
    Inputs,
    Message,
    PayloadError,
    Pulse,
    ReadInputs,
    Role,
    SetOutput,
    Status,
    decode_message,
    encode_message,
)

RECENT_COMMANDS = 16  # command ids remembered with their ACK (at-most-once)
EVENT_QUEUE = 32  # INPUT_CHANGED messages queued while the link is down


@dataclass(frozen=True, slots=True)
class OutputChange:
    """Output ``output`` went ``on`` or off at ``at`` (``time.monotonic()``)."""

    at: float
    output: int
    on: bool


@dataclass
class McuStats:
    frames_in: int = 0
    frames_out: int = 0
    retries: int = 0
    duplicates: int = 0  # same seq again: the stored reply resent
    duplicate_commands: int = 0  # known command id under a new seq: original ACK resent
    gave_up: int = 0
    link_losses: int = 0
    boots: int = 0
    events_dropped: int = 0
    frames_dropped: int = 0  # by drop_rate, either direction
    frames_corrupted: int = 0  # by corrupt_rate, either direction
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pending:
    message: Message
    seq: int
    wire: bytes
    deadline: float
    sends: int = 1


class McuEmulator:
    """The MCU: ``outputs`` solenoid/maglock drivers, ``inputs`` debounced door sensors.

    ``stuck_output(i)`` models a driver fault the firmware detects: PULSE and SET_OUTPUT on
    that output are refused with ``OUTPUT_FAULT`` and it is never energised.
    ``drop_rate``/``corrupt_rate`` apply to each frame the MCU sends and each chunk it
    reads (at these speeds a chunk is usually one frame): dropped whole, or one bit
    flipped. ``on_output`` is called from the emulator's thread on every output change.
    ``baudrate``, if given, paces both directions like a UART at that speed.
    """

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
        self.n_outputs, self.n_inputs = outputs, inputs
        self.max_on_ms, self.debounce_ms, self.firmware = max_on_ms, debounce_ms, firmware
        self.heartbeat_s, self.link_timeout_s = heartbeat_s, link_timeout_s
        self.ack_timeout_s, self.retries = ack_timeout_s, retries
        self.drop_rate, self.corrupt_rate = drop_rate, corrupt_rate
        # A pty moves bytes at once; with a baud rate the firmware takes as long as a UART
        # would to receive and to send them (10 bits per byte).
        self._byte_s = 10 / baudrate if baudrate else 0.0
        self.on_output: Callable[[int, bool], None] | None = None
        self.output_log: list[OutputChange] = []
        self.commands_executed: list[int] = []  # command ids acted upon, in order
        self.stats = McuStats()
        self._rng = random.Random(seed)  # noqa: S311  # fault injection, not cryptography
        self._lock = threading.RLock()
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: bytes pass as a UART would
        os.set_blocking(self._master, False)  # nobody reading: bytes are lost, as on a UART
        self.path = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._actions: deque[tuple[Callable[[], None], threading.Event]] = deque()
        self._unplugged = False
        self._stuck: set[int] = set()
        self._raw = [False] * inputs
        self._raw_since = [0.0] * inputs
        self._outputs = [False] * outputs
        self._boot(time.monotonic())

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
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):  # already closed
                os.close(fd)

    def __enter__(self) -> McuEmulator:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def boot_id(self) -> int:
        return self._boot_id

    @property
    def link_up(self) -> bool:
        """The MCU's own view: its HELLO acknowledged, the host known and heard recently."""
        with self._lock:
            return self._link

    def output(self, index: int) -> bool:
        with self._lock:
            return self._outputs[index]

    def input(self, index: int) -> bool:
        """The debounced level the firmware reports."""
        with self._lock:
            return self._stable[index]

    def physical(self, index: int) -> bool:
        """The level on the pin now, before the firmware's debounce."""
        with self._lock:
            return self._raw[index]

    def set_input(self, index: int, level: bool) -> None:
        """The physical level of input ``index`` changes now (debounced by the firmware)."""
        with self._lock:
            if self._raw[index] != level:
                self._raw[index] = level
                self._raw_since[index] = time.monotonic()
        self._wake()

    def inject_noise(self, data: bytes) -> None:
        """Put ``data`` on the MCU -> host line between two frames."""
        self._call(lambda: self._send_raw(data))

    def reboot(self) -> None:
        """A reset: new boot id, every output off, all state lost, HELLO again."""
        self._call(lambda: self._boot(time.monotonic()))

    def stuck_output(self, index: int, stuck: bool = True) -> None:
        """Output ``index``'s driver is faulted (or repaired): commands get OUTPUT_FAULT."""
        def apply() -> None:
            (self._stuck.add if stuck else self._stuck.discard)(index)
        self._call(apply)

    def unplug(self) -> None:
        """The MCU stops answering entirely (reads are discarded, nothing is sent)."""
        self._call(lambda: setattr(self, "_unplugged", True))

    def plug(self) -> None:
        """Resume reading and sending."""
        self._call(lambda: setattr(self, "_unplugged", False))

    # --- the thread ---------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # closed: nobody to wake
            os.write(self._wake_w, b"\x01")

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
                self._tick(time.monotonic())
                timeout = max(0.0, self._next_deadline() - time.monotonic())
            ready, _, _ = select.select([self._master, self._wake_r], [], [], min(timeout, 0.5))
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            if self._master in ready:
                try:
                    data = os.read(self._master, 4096)
                except BlockingIOError:
                    continue
                except OSError:  # the pty is gone
                    return
                if self._byte_s:
                    time.sleep(len(data) * self._byte_s)  # the bytes arriving at line speed
                with self._lock:
                    self._on_bytes(data, time.monotonic())

    # --- firmware state -----------------------------------------------------------------

    def _boot(self, now: float) -> None:
        self.stats.boots += 1
        self._boot_id = self._rng.getrandbits(32)
        self._boot_at = now
        self._decoder = FrameDecoder()
        self._tx_seq = 0
        self._host_boot: int | None = None
        self._rx_seq: int | None = None
        self._rx_reply = b""
        self._recent: OrderedDict[int, Ack] = OrderedDict()
        self._events: deque[InputChanged] = deque()
        self._pending: _Pending | None = None
        self._hello_acked = False
        self._next_hello = now
        self._next_heartbeat = now
        self._last_rx: float | None = None
        self._link = False
        self._pulse: tuple[int, float] | None = None  # output, ends at
        self._held: set[int] = set()
        for index in range(self.n_outputs):
            self._drive(index, False, now)
        self._stable = list(self._raw)  # read at boot: no change events for the initial state

    def _ms(self, at: float) -> int:
        return int((at - self._boot_at) * 1000) & 0xFFFFFFFF

    def _drive(self, index: int, on: bool, now: float) -> None:
        if self._outputs[index] == on:
            return
        self._outputs[index] = on
        self.output_log.append(OutputChange(now, index, on))
        if self.on_output is not None:
            self.on_output(index, on)

    def _end_pulse(self, now: float) -> None:
        if self._pulse is not None:
            self._drive(self._pulse[0], False, now)
            self._pulse = None

    def _next_deadline(self) -> float:
        deadlines = [self._next_heartbeat]
        if self._pulse is not None:
            deadlines.append(self._pulse[1])
        if self._pending is not None:
            deadlines.append(self._pending.deadline)
        elif not self._hello_acked:
            deadlines.append(self._next_hello)
        if self._last_rx is not None:
            deadlines.append(self._last_rx + self.link_timeout_s)
        deadlines += [self._raw_since[i] + self.debounce_ms / 1000
                      for i in range(self.n_inputs) if self._raw[i] != self._stable[i]]
        return min(deadlines)

    def _tick(self, now: float) -> None:
        if self._pulse is not None and now >= self._pulse[1]:
            self._end_pulse(now)  # the firmware's own on-time cap
        self._debounce(now)
        if self._last_rx is not None and now - self._last_rx >= self.link_timeout_s:
            self._last_rx = None
            self._link_lost(now)
        pending = self._pending
        if pending is not None and now >= pending.deadline:
            if pending.sends <= self.retries:
                pending.sends += 1
                pending.deadline = now + self.ack_timeout_s
                self.stats.retries += 1
                self._send_wire(pending.wire)
            else:
                self._give_up(pending, now)
        if now >= self._next_heartbeat:
            self._send(Heartbeat(self._boot_id, self._ms(now)), 0)
            self._next_heartbeat = now + self.heartbeat_s
        self._link = (self._hello_acked and self._host_boot is not None
                      and self._last_rx is not None)
        self._transmit_next(now)

    def _debounce(self, now: float) -> None:
        settled = sorted((self._raw_since[i], i) for i in range(self.n_inputs)
                         if self._raw[i] != self._stable[i]
                         and now - self._raw_since[i] >= self.debounce_ms / 1000)
        for since, index in settled:  # in the order the edges happened
            self._stable[index] = self._raw[index]
            if len(self._events) >= EVENT_QUEUE:
                self._events.popleft()
                self.stats.events_dropped += 1
            self._events.append(InputChanged(index, self._raw[index], self._ms(since)))

    def _link_lost(self, now: float) -> None:
        """No frame for the link timeout, or no ACK after the retries."""
        if self._link:
            self.stats.link_losses += 1
        self._link = False
        self._hello_acked = False
        self._end_pulse(now)  # fail safe: never leave a coil energised without a host

    def _give_up(self, pending: _Pending, now: float) -> None:
        self._pending = None
        self.stats.gave_up += 1
        if isinstance(pending.message, InputChanged):
            self._events.appendleft(pending.message)  # at least once: again after the link
        else:
            self._next_hello = now + self.heartbeat_s
        self._link_lost(now)

    # --- sending ------------------------------------------------------------------------

    def _send(self, message: Message, seq: int) -> bytes:
        wire = encode_message(message, seq)
        self._send_wire(wire)
        return wire

    def _send_wire(self, wire: bytes) -> None:
        if self._unplugged:
            return
        self.stats.frames_out += 1
        self._send_raw(self._damage(wire))

    def _send_raw(self, data: bytes) -> None:
        if self._byte_s:
            time.sleep(len(data) * self._byte_s)  # the UART shifting the bytes out
        with contextlib.suppress(BlockingIOError, OSError):  # nobody reading: lost
            os.write(self._master, data)

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

    def _transmit_next(self, now: float) -> None:
        if self._pending is not None or self._unplugged:
            return
        message: Message
        if not self._hello_acked:
            if now < self._next_hello:
                return
            message = Hello(Role.MCU, self._boot_id, self.n_outputs, self.n_inputs,
                            self.max_on_ms, self.firmware)
        elif self._link and self._events:
            message = self._events.popleft()
        else:
            return
        seq, self._tx_seq = self._tx_seq, (self._tx_seq + 1) & 0xFF
        wire = self._send(message, seq)
        self._pending = _Pending(message, seq, wire, now + self.ack_timeout_s)

    def _reply(self, seq: int, message: Ack | Inputs) -> None:
        self._rx_seq, self._rx_reply = seq, self._send(message, seq)

    # --- receiving ----------------------------------------------------------------------

    def _on_bytes(self, data: bytes, now: float) -> None:
        if self._unplugged:
            return
        for item in self._decoder.feed(self._damage(data)):
            if isinstance(item, FrameError):
                self.stats.errors[item.kind.value] = self.stats.errors.get(item.kind.value, 0) + 1
                continue
            self.stats.frames_in += 1
            self._last_rx = now
            try:
                message = decode_message(item)
            except PayloadError as exc:
                self.stats.errors[exc.status.name] = self.stats.errors.get(exc.status.name, 0) + 1
                if item.type not in UNACKNOWLEDGED:
                    self._reply(item.seq, Ack(item.type, exc.status))
                continue
            self._on_message(message, item.seq, now)
        self._tick(now)

    def _on_message(self, message: Message, seq: int, now: float) -> None:
        match message:
            case Ack():
                pending = self._pending
                if pending is not None and seq == pending.seq and (
                        message.acked_type == pending.message.TYPE):
                    self._pending = None
                    if isinstance(pending.message, Hello):
                        self._hello_acked = message.status.ok
                        if not message.status.ok:
                            self._next_hello = now + self.heartbeat_s
            case Heartbeat(boot_id=boot_id):
                if self._host_boot is not None and boot_id != self._host_boot:
                    self._host_restarted(None, now)
            case Inputs():
                pass  # only the MCU sends INPUTS
            case Hello():
                self._on_hello(message, seq, now)
            case _ if seq == self._rx_seq:
                self.stats.duplicates += 1
                self._send_wire(self._rx_reply)
            case ReadInputs():
                self._reply(seq, Inputs(tuple(self._stable)))
            case Pulse() | SetOutput():
                self._on_command(message, seq, now)
            case _:  # INPUT_CHANGED: the MCU never receives it
                self._reply(seq, Ack(message.TYPE, Status.UNKNOWN_TYPE))

    def _on_hello(self, hello: Hello, seq: int, now: float) -> None:
        if hello.protocol != PROTOCOL_VERSION:
            self._reply(seq, Ack(hello.TYPE, Status.UNSUPPORTED_VERSION))
            return
        if hello.role is not Role.HOST:
            self._reply(seq, Ack(hello.TYPE, Status.BAD_VALUE))
            return
        if hello.boot_id != self._host_boot:
            self._host_restarted(hello.boot_id, now)
        self._reply(seq, Ack(hello.TYPE, Status.OK))

    def _host_restarted(self, boot_id: int | None, now: float) -> None:
        """A host we do not know: forget its seq and command ids, end any pulse, and say
        HELLO to it (held outputs keep their level until it says otherwise)."""
        self._host_boot = boot_id
        self._rx_seq = None
        self._recent.clear()
        self._end_pulse(now)
        self._hello_acked = False
        if self._pending is None or not isinstance(self._pending.message, Hello):
            self._next_hello = now
        else:  # resend it now: the new host has not heard it
            self._pending.deadline = now

    def _on_command(self, command: Pulse | SetOutput, seq: int, now: float) -> None:
        if self._host_boot is None:
            self._reply(seq, Ack(command.TYPE, Status.NOT_READY, command.command_id))
            return
        earlier = self._recent.get(command.command_id)
        if earlier is not None:
            self.stats.duplicate_commands += 1
            self._reply(seq, earlier)
            return
        ack = (self._pulse_command(command, now) if isinstance(command, Pulse)
               else self._set_command(command, now))
        self._recent[command.command_id] = ack
        while len(self._recent) > RECENT_COMMANDS:
            self._recent.popitem(last=False)
        self._reply(seq, ack)

    def _refusal(self, command: Pulse | SetOutput) -> Ack | None:
        if command.output >= self.n_outputs:
            return Ack(command.TYPE, Status.BAD_OUTPUT, command.command_id, self.n_outputs)
        if command.output in self._stuck:
            return Ack(command.TYPE, Status.OUTPUT_FAULT, command.command_id, command.output)
        return None

    def _pulse_command(self, pulse: Pulse, now: float) -> Ack:
        refusal = self._refusal(pulse)
        if refusal is not None:
            return refusal
        busy = self._pulse[0] if self._pulse is not None else (
            pulse.output if pulse.output in self._held else None)
        if busy is not None:
            return Ack(pulse.TYPE, Status.BUSY, pulse.command_id, busy)
        granted = min(pulse.duration_ms, self.max_on_ms)
        self.commands_executed.append(pulse.command_id)
        self._pulse = (pulse.output, now + granted / 1000)
        self._drive(pulse.output, True, now)
        status = Status.CAPPED if granted < pulse.duration_ms else Status.OK
        return Ack(pulse.TYPE, status, pulse.command_id, granted)

    def _set_command(self, command: SetOutput, now: float) -> Ack:
        refusal = self._refusal(command)
        if refusal is not None:
            return refusal
        pulsing = self._pulse is not None and self._pulse[0] == command.output
        if pulsing and command.level:
            return Ack(command.TYPE, Status.BUSY, command.command_id, command.output)
        self.commands_executed.append(command.command_id)
        if pulsing:
            self._end_pulse(now)
        (self._held.add if command.level else self._held.discard)(command.output)
        self._drive(command.output, command.level, now)
        return Ack(command.TYPE, Status.OK, command.command_id)

