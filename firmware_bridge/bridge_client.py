"""The asyncio host of the firmware bridge: a :class:`BridgeSession` over an AsyncSerialPort.

``async with BridgeClient(url) as bridge`` opens the port and runs one supervisor task
(port reader and timers under a TaskGroup); the port is reopened with capped, jittered
exponential backoff if it goes away. Commands wait for the MCU's answer: :meth:`pulse`
returns once the MCU acknowledged the pulse (it has started) with the on-time it granted;
no answer after the retries raises :class:`BridgeDown`, an error status
:class:`BridgeRefused`. A pulse is never reported as done unless the MCU acknowledged it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from types import TracebackType

from firmware_bridge.bridge_codec import (
    Ack,
    InputChanged,
    Inputs,
    MessageType,
    Pulse,
    ReadInputs,
    SetOutput,
    Status,
)
from firmware_bridge.bridge_session import (
    Answered,
    BridgeSession,
    BridgeStats,
    Command,
    GaveUp,
    LinkDown,
    LinkUp,
    PeerInfo,
)
from firmware_bridge.serial_port import AsyncSerialPort, SerialPortClosed, SerialPortError

log = logging.getLogger(__name__)

BridgeEvent = InputChanged | LinkUp | LinkDown
EVENT_QUEUE = 1024  # events kept for a slow reader; beyond, the oldest go (counted)
_REOPEN_BASE_S, _REOPEN_CAP_S = 0.2, 5.0

__all__ = [
    "BridgeClient", "BridgeDown", "BridgeError", "BridgeEvent", "BridgeRefused", "BridgeStats",
    "InputChanged", "LinkDown", "LinkUp", "PeerInfo", "Status",
]


class BridgeError(Exception):
    """Base of the bridge client's errors."""


class BridgeDown(BridgeError, ConnectionError):
    """No link to the MCU, or no answer from it after the retries."""


class BridgeRefused(BridgeError):
    """The MCU answered with an error status; ``code`` says which."""

    def __init__(self, code: Status, message: str) -> None:
        super().__init__(message)
        self.code = code


_EXPLAIN = {
    Status.UNKNOWN_TYPE: "the firmware does not know this message",
    Status.BAD_LENGTH: "the payload length is wrong for the message",
    Status.BAD_VALUE: "a field is out of range",
    Status.BAD_OUTPUT: "no such output (the MCU has {value})",
    Status.BUSY: "output {value} is energised (one coil at a time)",
    Status.OUTPUT_FAULT: "the driver of output {value} reports a fault",
    Status.NOT_READY: "the MCU has not heard this host's HELLO",
    Status.UNSUPPORTED_VERSION: "unsupported protocol version",
}


def _refused(command: Command, ack: Ack) -> BridgeRefused:
    what = MessageType(command.TYPE).name
    target = f" on output {command.output}" if isinstance(command, Pulse | SetOutput) else ""
    why = _EXPLAIN.get(ack.status, "").format(value=ack.value)
    return BridgeRefused(ack.status, f"MCU refused {what}{target}: {ack.status.name} ({why})")


def _backoff_s(attempt: int) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    window = min(_REOPEN_CAP_S, _REOPEN_BASE_S * 2 ** min(attempt, 16))
    return random.uniform(0, window)  # noqa: S311  # jitter, not cryptography


class BridgeClient:
    """The host end of one MCU link. Use as an async context manager."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 115200,
        heartbeat_s: float = 0.5,
        link_timeout_s: float = 2.0,
        ack_timeout_s: float = 0.1,
        retries: int = 3,
    ) -> None:
        self.url = url
        self._baudrate = baudrate
        rng = random.SystemRandom()  # boot ids must differ across restarts of the host
        self._session = BridgeSession(
            boot_id=rng.getrandbits(32), now=time.monotonic(), heartbeat_s=heartbeat_s,
            link_timeout_s=link_timeout_s, ack_timeout_s=ack_timeout_s, retries=retries)
        self._command_id = rng.getrandbits(16)
        self.stats: BridgeStats = self._session.stats
        self._events: asyncio.Queue[BridgeEvent | None] = asyncio.Queue(EVENT_QUEUE)
        self._waiting: dict[int, asyncio.Future[Ack | Inputs]] = {}
        self._up = asyncio.Event()
        self._wake = asyncio.Event()
        self._port: AsyncSerialPort | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def boot_id(self) -> int:
        """This host's boot id, as sent in its HELLO."""
        return self._session.hello.boot_id

    @property
    def link_up(self) -> bool:
        return self._session.link_up

    @property
    def peer(self) -> PeerInfo | None:
        """The MCU's latest HELLO (kept while the link is down)."""
        return self._session.peer

    # --- lifetime -----------------------------------------------------------------------

    async def __aenter__(self) -> BridgeClient:
        """Open the port (raises :class:`BridgeDown` if it cannot) and start the tasks."""
        port = AsyncSerialPort(self.url, baudrate=self._baudrate)
        try:
            await port.__aenter__()
        except SerialPortError as exc:
            raise BridgeDown(str(exc)) from exc
        self._runner = asyncio.create_task(self._run(port), name=f"bridge:{self.url}")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the tasks, close the port, fail commands still waiting. Idempotent."""
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            # gather, not suppress(CancelledError): a cancellation of this task that
            # arrives meanwhile must not be swallowed with the child's
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(BridgeDown("the bridge client is closed"))
        self._waiting.clear()
        self._up.clear()
        self._publish(None)

    async def _run(self, first: AsyncSerialPort) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._run_port(first), name=f"bridge-port:{self.url}")
                group.create_task(self._run_timers(), name=f"bridge-timers:{self.url}")
        except Exception:
            log.exception("bridge %s: the client stopped on an internal error", self.url)
            self._session.connection_lost("internal error", time.monotonic())
            self._pump()
            raise

    async def _run_port(self, first: AsyncSerialPort) -> None:
        port: AsyncSerialPort | None = first
        attempt = 0
        while True:
            if port is None:
                port = await self._reopen(attempt)
                if port is None:
                    attempt += 1
                    continue
                attempt = 0
            reason = "serial port closed"
            try:
                self._port = port
                self._pump()
                async for chunk in port:
                    self._session.receive_data(chunk, time.monotonic())
                    self._pump()
            except SerialPortClosed as exc:
                reason = f"serial port lost: {exc}"
                log.warning("bridge %s: %s", self.url, reason)
            finally:
                self._port = None
                await port.aclose()
            port = None
            self._session.connection_lost(reason, time.monotonic())
            self._pump()

    async def _reopen(self, attempt: int) -> AsyncSerialPort | None:
        delay = _backoff_s(attempt)
        log.info("bridge %s: reopening in %.2f s (attempt %d)", self.url, delay, attempt + 1)
        await asyncio.sleep(delay)
        port = AsyncSerialPort(self.url, baudrate=self._baudrate)
        try:
            await port.__aenter__()
        except SerialPortError as exc:
            log.warning("bridge %s: %s", self.url, exc)
            return None
        self.stats.port_reopens += 1
        return port

    async def _run_timers(self) -> None:
        while True:
            delay = self._session.next_deadline() - time.monotonic()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            self._session.tick(time.monotonic())
            self._pump()

    def _pump(self) -> None:
        """Write what the session wants sent; hand its events to waiters and readers."""
        data = self._session.data_to_send()
        if data and self._port is not None:
            try:
                self._port.write(data)
            except OSError as exc:  # the reader task notices the port is gone
                log.debug("bridge %s: write failed: %s", self.url, exc)
        for event in self._session.events():
            match event:
                case Answered(ticket=ticket, reply=reply):
                    self._resolve(ticket, reply, None)
                case GaveUp(ticket=ticket, reason=reason):
                    self._resolve(ticket, None, BridgeDown(reason))
                case LinkUp():
                    log.info("bridge %s: link up, MCU %08x%s", self.url, event.peer.boot_id,
                             " (restarted)" if event.restarted else "")
                    self._up.set()
                    self._publish(event)
                case LinkDown():
                    log.warning("bridge %s: link down: %s", self.url, event.reason)
                    self._up.clear()
                    self._publish(event)
                case InputChanged():
                    self._publish(event)
        self._wake.set()

    def _resolve(self, ticket: int, reply: Ack | Inputs | None, error: BridgeDown | None) -> None:
        future = self._waiting.pop(ticket, None)
        if future is None or future.done():  # the caller was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert reply is not None
            future.set_result(reply)

    def _publish(self, event: BridgeEvent | None) -> None:
        if self._events.full():
            self._events.get_nowait()
            self.stats.events_dropped += 1
        self._events.put_nowait(event)

    # --- commands -----------------------------------------------------------------------

    async def wait_link(self, timeout: float) -> PeerInfo:  # noqa: ASYNC109  # the agent's API
        """Wait until the link is up; raises :class:`BridgeDown` after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                while not (self.link_up and self.peer is not None):
                    await self._up.wait()
                    await asyncio.sleep(0)
        except TimeoutError:
            raise BridgeDown(f"no link to the MCU on {self.url} within {timeout:g} s") from None
        assert self.peer is not None
        return self.peer

    async def pulse(self, output: int, ms: int) -> int:
        """Energise ``output`` for ``ms`` (1..65535) milliseconds; returns the on-time the
        MCU granted (capped at its max_on_ms) once it has acknowledged the pulse started.

        Raises :class:`BridgeDown` (no link or no ACK), :class:`BridgeRefused` (BUSY,
        BAD_OUTPUT, OUTPUT_FAULT...), ValueError for values the protocol cannot carry.
        """
        ack = await self._ack(Pulse(self._next_command_id(), output, ms))
        return ack.value

    async def set_output(self, output: int, on: bool) -> None:
        """Hold ``output`` on or off (maglocks). Raises like :meth:`pulse`."""
        await self._ack(SetOutput(self._next_command_id(), output, on))

    async def read_inputs(self) -> tuple[bool, ...]:
        """Every input's debounced level, input 0 first. Raises like :meth:`pulse`."""
        command = ReadInputs()
        reply = await self._command(command)
        if isinstance(reply, Ack):
            raise _refused(command, reply)
        return reply.levels

    def events(self) -> AsyncIterator[BridgeEvent]:
        """Every input change and link change, in order; ends when the client closes."""
        return self._iter_events()

    async def _iter_events(self) -> AsyncIterator[BridgeEvent]:
        while (event := await self._events.get()) is not None:
            yield event

    def _next_command_id(self) -> int:
        self._command_id = (self._command_id + 1) & 0xFFFF
        return self._command_id

    async def _ack(self, command: Pulse | SetOutput) -> Ack:
        reply = await self._command(command)
        if isinstance(reply, Ack) and not reply.status.ok:
            raise _refused(command, reply)
        if not isinstance(reply, Ack) or reply.command_id != command.command_id:
            raise BridgeDown(f"the MCU answered {MessageType(command.TYPE).name} with {reply}")
        return reply

    async def _command(self, command: Command) -> Ack | Inputs:
        if self._closed or self._runner is None:
            raise BridgeDown("the bridge client is not running")
        if not self.link_up:
            raise BridgeDown(f"no link to the MCU on {self.url}")
        future: asyncio.Future[Ack | Inputs] = asyncio.get_running_loop().create_future()
        ticket = self._session.send(command, time.monotonic())
        self._waiting[ticket] = future
        self._pump()
        return await future
