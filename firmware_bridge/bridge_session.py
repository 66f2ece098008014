"""Sans-I/O host side of the firmware-bridge protocol: sequencing, retries, link state.

No asyncio, no serial port, no clock of its own: every call takes ``now`` (seconds, any
monotonic origin). Feed received bytes to :meth:`BridgeSession.receive_data`, call
:meth:`BridgeSession.tick` at :meth:`BridgeSession.next_deadline`, write what
:meth:`BridgeSession.data_to_send` returns, and act on :meth:`BridgeSession.events`.

The rules (docs/firmware-bridge.md, "Reliability" and "Link"): one message awaiting ACK at
a time (stop-and-wait), retried with the same seq after ``ack_timeout_s`` up to
``retries`` times; giving up takes the link down. A received message whose seq equals the
previous one is a retry: it is answered again with the stored reply, not processed again.
The link is up while our HELLO has been acknowledged since the link last went down, the
MCU's HELLO is known and its boot id is the one its frames carry, and some valid frame
arrived within ``link_timeout_s``.
"""

from __future__ import annotations

from collections import deque
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
    MessageType,
    PayloadError,
    Pulse,
    ReadInputs,
    Role,
    SetOutput,
    Status,
    decode_message,
    encode_message,
)

Command = Pulse | SetOutput | ReadInputs


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the MCU announced in its HELLO."""

    boot_id: int
    outputs: int
    inputs: int
    max_on_ms: int
    firmware: str


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The link is up; ``restarted``: the MCU's boot id differs from the previous link's."""

    peer: PeerInfo
    restarted: bool


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str


@dataclass(frozen=True, slots=True)
class Answered:
    """The MCU answered the command sent as ``ticket`` (an ACK, or INPUTS for READ_INPUTS)."""

    ticket: int
    reply: Ack | Inputs


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The command sent as ``ticket`` has no answer and never will (link down, no ACK)."""

    ticket: int
    reason: str


SessionEvent = LinkUp | LinkDown | InputChanged | Answered | GaveUp


@dataclass
class BridgeStats:
    """Counters; ``errors`` by kind: the frame error kinds, ``bad_payload``,
    ``unknown_type``, ``refused_hello``."""

    frames_in: int = 0
    frames_out: int = 0
    retries: int = 0
    duplicates: int = 0  # received retries answered again without processing
    stale_answers: int = 0  # ACK/INPUTS matching nothing pending (late, after a retry)
    gave_up: int = 0
    link_downs: int = 0
    peer_restarts: int = 0
    events_dropped: int = 0  # set by the client when nobody reads its events
    port_reopens: int = 0  # set by the client
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass
class _Pending:
    ticket: int | None  # None: our own HELLO
    message: Message
    seq: int
    wire: bytes
    deadline: float
    sends: int = 1


class BridgeSession:
    """The host's half of the link to one MCU."""

    def __init__(
        self,
        *,
        boot_id: int,
        now: float,
        firmware: str = "curbside-host",
        heartbeat_s: float = 0.5,
        link_timeout_s: float = 2.0,
        ack_timeout_s: float = 0.1,
        retries: int = 3,
        queue_limit: int = 32,
    ) -> None:
        self.hello = Hello(Role.HOST, boot_id, firmware=firmware)
        self.heartbeat_s = heartbeat_s
        self.link_timeout_s = link_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self.retries = retries
        self.queue_limit = queue_limit
        self.stats = BridgeStats()
        self._start = now
        self._decoder = FrameDecoder()
        self._out = bytearray(b"\x00")  # ends whatever partial frame the MCU holds
        self._events: list[SessionEvent] = []
        self._tx_seq = 0
        self._next_ticket = 1
        self._queue: deque[tuple[int, Command]] = deque()
        self._pending: _Pending | None = None
        self._hello_acked = False
        self._next_hello = now
        self._next_heartbeat = now
        self._peer: PeerInfo | None = None
        self._peer_boot: int | None = None  # the boot id the MCU's latest frame carried
        self._up_boot: int | None = None  # the MCU's boot id when the link was last up
        self._last_rx: float | None = None
        self._rx_seq: int | None = None  # seq of the MCU's last acknowledged message
        self._rx_reply = b""
        self._last_change: dict[int, InputChanged] = {}  # per input, the last one accepted
        self._link_up = False

    # --- the caller's side --------------------------------------------------------------

    @property
    def link_up(self) -> bool:
        return self._link_up

    @property
    def peer(self) -> PeerInfo | None:
        return self._peer

    def data_to_send(self) -> bytes:
        """Bytes to write to the port now (then forgotten)."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def events(self) -> list[SessionEvent]:
        """Events since the last call, in order (then forgotten)."""
        events, self._events = self._events, []
        return events

    def send(self, command: Command, now: float) -> int:
        """Queue ``command``; returns its ticket. Its outcome is one later :class:`Answered`
        or :class:`GaveUp` event with that ticket (at once if the link is down)."""
        ticket = self._next_ticket
        self._next_ticket += 1
        if not self._link_up:
            self._events.append(GaveUp(ticket, "link is down"))
        elif len(self._queue) >= self.queue_limit:
            self._events.append(GaveUp(ticket, f"{self.queue_limit} commands already queued"))
        else:
            self._queue.append((ticket, command))
            self._transmit_next(now)
        return ticket

    def next_deadline(self) -> float:
        """When :meth:`tick` must be called next, at the latest."""
        deadlines = [self._next_heartbeat]
        if self._pending is not None:
            deadlines.append(self._pending.deadline)
        elif not self._hello_acked:
            deadlines.append(self._next_hello)
        if self._last_rx is not None and (self._link_up or self._hello_acked):
            deadlines.append(self._last_rx + self.link_timeout_s)
        return min(deadlines)

    def tick(self, now: float) -> None:
        """Run the timers: link loss, retries and give-up, heartbeats, HELLO."""
        silent = self._last_rx is None or now - self._last_rx >= self.link_timeout_s
        if silent and (self._link_up or self._hello_acked):
            self._go_down(f"no frame from the MCU for {self.link_timeout_s:g} s", now)
        pending = self._pending
        if pending is not None and now >= pending.deadline:
            if pending.sends <= self.retries:
                pending.sends += 1
                pending.deadline = now + self.ack_timeout_s
                self.stats.retries += 1
                self._write(pending.wire)
            else:
                self._give_up(pending, now)
        if now >= self._next_heartbeat:
            uptime_ms = int((now - self._start) * 1000) & 0xFFFFFFFF
            self._write(encode_message(Heartbeat(self.hello.boot_id, uptime_ms), 0))
            self._next_heartbeat = now + self.heartbeat_s
        self._transmit_next(now)
        self._update_link(now)

    def connection_lost(self, reason: str, now: float) -> None:
        """The port went away: the link is down and any partial frame is forgotten."""
        self._go_down(reason, now)
        self._decoder = FrameDecoder()
        self._out = bytearray(b"\x00")
        self._last_rx = None

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the port, split anywhere."""
        for item in self._decoder.feed(data):
            if isinstance(item, FrameError):
                self.stats.count_error(item.kind.value)
                continue
            self._last_rx = now
            self.stats.frames_in += 1
            try:
                message = decode_message(item)
            except PayloadError as exc:
                self.stats.count_error(
                    "unknown_type" if exc.status is Status.UNKNOWN_TYPE else "bad_payload")
                if item.type not in UNACKNOWLEDGED:
                    self._reply(item.seq, Ack(item.type, exc.status), remember=True)
                continue
            self._on_message(message, item.seq, now)
        self._transmit_next(now)
        self._update_link(now)

    # --- received messages --------------------------------------------------------------

    def _on_message(self, message: Message, seq: int, now: float) -> None:
        match message:
            case Ack() | Inputs():
                self._on_answer(message, seq, now)
            case Heartbeat(boot_id=boot_id):
                if self._peer is not None and boot_id != self._peer_boot:
                    self._peer_restarted(now)
                self._peer_boot = boot_id
            case Hello():
                self._on_hello(message, seq, now)
            case InputChanged() if seq == self._rx_seq:
                self.stats.duplicates += 1
                self._write(self._rx_reply)
            case InputChanged():
                if self._last_change.get(message.input) == message:
                    self.stats.duplicates += 1  # resent by the MCU after a link loss
                else:
                    self._last_change[message.input] = message
                    self._events.append(message)
                self._reply(seq, Ack(message.TYPE, Status.OK), remember=True)
            case _:  # a command: the host executes none
                self.stats.count_error("unknown_type")
                self._reply(seq, Ack(message.TYPE, Status.UNKNOWN_TYPE), remember=True)

    def _on_hello(self, hello: Hello, seq: int, now: float) -> None:
        if hello.protocol != PROTOCOL_VERSION or hello.role is not Role.MCU:
            self.stats.count_error("refused_hello")
            status = Status.UNSUPPORTED_VERSION if hello.protocol != PROTOCOL_VERSION else (
                Status.BAD_VALUE)
            self._reply(seq, Ack(hello.TYPE, status), remember=False)
            return
        new_boot = self._peer is None or hello.boot_id != self._peer.boot_id
        if self._peer is not None and hello.boot_id != self._peer_boot:
            self._peer_restarted(now)
        self._peer = PeerInfo(hello.boot_id, hello.outputs, hello.inputs, hello.max_on_ms,
                              hello.firmware)
        self._peer_boot = hello.boot_id
        # A HELLO is always processed (it is idempotent) and starts the MCU's seq afresh.
        self._reply(seq, Ack(hello.TYPE, Status.OK), remember=True)
        if new_boot:
            self._hello_acked = False  # the new MCU must hear our HELLO too
            if self._pending is None or self._pending.ticket is not None:
                self._next_hello = now
            else:  # our HELLO is waiting for an ACK: resend it now rather than at its timeout
                self._pending.deadline = now

    def _on_answer(self, reply: Ack | Inputs, seq: int, now: float) -> None:
        pending = self._pending
        expected = MessageType.READ_INPUTS if isinstance(reply, Inputs) else (
            reply.acked_type if isinstance(reply, Ack) else None)
        if pending is None or seq != pending.seq or expected != pending.message.TYPE:
            self.stats.stale_answers += 1
            return
        self._pending = None
        if pending.ticket is not None:
            self._events.append(Answered(pending.ticket, reply))
        elif isinstance(reply, Ack) and reply.status.ok:
            self._hello_acked = True
        else:  # our HELLO refused: say it again later
            self.stats.count_error("refused_hello")
            self._next_hello = now + self.heartbeat_s

    def _peer_restarted(self, now: float) -> None:
        self.stats.peer_restarts += 1
        self._rx_seq = None
        self._last_change.clear()
        self._go_down("the MCU restarted", now)

    # --- sending ------------------------------------------------------------------------

    def _write(self, wire: bytes) -> None:
        self._out += wire
        self.stats.frames_out += 1

    def _reply(self, seq: int, message: Ack | Inputs, *, remember: bool) -> None:
        wire = encode_message(message, seq)
        if remember:
            self._rx_seq, self._rx_reply = seq, wire
        self._write(wire)

    def _transmit_next(self, now: float) -> None:
        if self._pending is not None:
            return
        ticket: int | None
        message: Message
        if not self._hello_acked:
            if now < self._next_hello:
                return
            ticket, message = None, self.hello
        elif self._link_up and self._queue:
            ticket, message = self._queue.popleft()
        else:
            return
        seq, self._tx_seq = self._tx_seq, (self._tx_seq + 1) & 0xFF
        wire = encode_message(message, seq)
        self._pending = _Pending(ticket, message, seq, wire, now + self.ack_timeout_s)
        self._write(wire)

    def _give_up(self, pending: _Pending, now: float) -> None:
        self._pending = None
        self.stats.gave_up += 1
        reason = (f"no answer to {pending.message.TYPE.name} seq {pending.seq}"
                  f" after {self.retries} retries")
        if pending.ticket is None:
            self._next_hello = now + self.heartbeat_s
        else:
            self._events.append(GaveUp(pending.ticket, reason))
        self._go_down(reason, now)

    # --- link state ---------------------------------------------------------------------

    def _go_down(self, reason: str, now: float) -> None:
        self._hello_acked = False
        pending = self._pending
        if pending is not None and pending.ticket is not None:
            self._pending = None
            self._events.append(GaveUp(pending.ticket, reason))
        while self._queue:
            self._events.append(GaveUp(self._queue.popleft()[0], reason))
        if self._pending is None:
            self._next_hello = max(self._next_hello, now)
        if self._link_up:
            self._link_up = False
            self.stats.link_downs += 1
            self._events.append(LinkDown(reason))

    def _update_link(self, now: float) -> None:
        peer = self._peer
        fresh = self._last_rx is not None and now - self._last_rx < self.link_timeout_s
        if self._link_up or not (self._hello_acked and fresh and peer is not None):
            return
        if peer.boot_id != self._peer_boot:
            return
        self._link_up = True
        restarted = self._up_boot is not None and self._up_boot != peer.boot_id
        self._up_boot = peer.boot_id
        self._events.append(LinkUp(peer, restarted))

