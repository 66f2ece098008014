"""Sans-I/O MCU side of the firmware-bridge protocol: the emulated firmware's logic.

No pty, no thread, no clock of its own: every call takes ``now`` (``time.monotonic()``
seconds). Feed received bytes to :meth:`McuFirmware.receive_data`, call
:meth:`McuFirmware.tick` at :meth:`McuFirmware.next_deadline`, report input pins with
:meth:`McuFirmware.set_input`; frames to send and output changes go, as they happen, to the
``transmit`` and ``drive`` callbacks (:class:`simulators.mcu.McuEmulator` supplies them).
Written from docs/firmware-bridge.md independently of the host's session so that each
checks the other.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass
class McuStats:
    """What the MCU counted; ``frames_dropped``/``frames_corrupted`` by fault injection."""

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


class McuFirmware:
    """``outputs`` solenoid/maglock drivers and ``inputs`` debounced door sensors.

    ``transmit(wire)`` gets each encoded frame to send (retries included), ``drive(output,
    on, now)`` each change of an output's level; ``rng`` draws the boot ids. While
    ``unplugged`` nothing is sent and no new message started. PULSE and SET_OUTPUT on an
    output in ``stuck`` (its driver faulted) are refused with ``OUTPUT_FAULT``.
    """

    def __init__(
        self,
        outputs: int,
        inputs: int,
        *,
        max_on_ms: int,
        debounce_ms: int,
        firmware: str,
        heartbeat_s: float,
        link_timeout_s: float,
        ack_timeout_s: float,
        retries: int,
        rng: random.Random,
        transmit: Callable[[bytes], None],
        drive: Callable[[int, bool, float], None],
        now: float,
    ) -> None:
        self.n_outputs, self.n_inputs = outputs, inputs
        self.max_on_ms, self.debounce_ms, self.firmware = max_on_ms, debounce_ms, firmware
        self.heartbeat_s, self.link_timeout_s = heartbeat_s, link_timeout_s
        self.ack_timeout_s, self.retries = ack_timeout_s, retries
        self.commands_executed: list[int] = []  # command ids acted upon, in order
        self.stats = McuStats()
        self.unplugged = False
        self.stuck: set[int] = set()
        self._rng, self._transmit, self._drive_output = rng, transmit, drive
        self._raw, self._raw_since = [False] * inputs, [0.0] * inputs  # pins, since when
        self._outputs = [False] * outputs
        self.boot(now)

    # --- the firmware's surface ---------------------------------------------------------

    @property
    def boot_id(self) -> int:
        return self._boot_id

    @property
    def link_up(self) -> bool:
        """Its HELLO acknowledged, the host known and heard recently (as of the last tick)."""
        return self._link

    def output(self, index: int) -> bool:
        return self._outputs[index]

    def input(self, index: int) -> bool:
        """The debounced level reported to the host."""
        return self._stable[index]

    def physical(self, index: int) -> bool:
        """The level on the pin, before the debounce."""
        return self._raw[index]

    def set_input(self, index: int, level: bool, now: float) -> None:
        """The level on input ``index``'s pin is ``level`` from ``now`` (if it changed)."""
        if self._raw[index] != level:
            self._raw[index] = level
            self._raw_since[index] = now

    def boot(self, now: float) -> None:
        """A reset: new boot id, every output off, all state but the pins lost, HELLO."""
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

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do."""
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

    def tick(self, now: float) -> None:
        """Run the timers: on-time cap, debounce, link timeout, retries, heartbeat, sending."""
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

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the host arrived at ``now``: decode and answer them, then tick."""
        for item in self._decoder.feed(data):
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
        self.tick(now)

    # --- state --------------------------------------------------------------------------

    def _ms(self, at: float) -> int:
        return int((at - self._boot_at) * 1000) & 0xFFFFFFFF

    def _drive(self, index: int, on: bool, now: float) -> None:
        if self._outputs[index] == on:
            return
        self._outputs[index] = on
        self._drive_output(index, on, now)

    def _end_pulse(self, now: float) -> None:
        if self._pulse is not None:
            self._drive(self._pulse[0], False, now)
            self._pulse = None

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
        if self.unplugged:
            return
        self.stats.frames_out += 1
        self._transmit(wire)

    def _transmit_next(self, now: float) -> None:
        if self._pending is not None or self.unplugged:
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

    # --- receiving, and the commands ----------------------------------------------------

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
        if command.output in self.stuck:
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
