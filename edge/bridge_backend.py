"""The firmware-bridge locker backend: a microcontroller on a serial line drives the locks.

Compartment pins are the microcontroller's output and input numbers. The microcontroller
enforces its own maximum on-time and turns its pulse outputs off when the link is lost,
so the cap does not depend on this process at all. A grant is reported as an unlock only
once the microcontroller has acknowledged the pulse; with the link down every
compartment is in fault and unlocks fail. When the link comes back (after a
microcontroller reboot too, which its boot id reveals) the inputs are read again.
"""

from __future__ import annotations

import asyncio
import logging

from edge.config import BridgeHardware, CompartmentConfig
from edge.locker_backend import (
    InputCallback,
    LinkCallback,
    LockFault,
    StartedCallback,
    UnlockFailed,
)
from firmware_bridge.bridge_client import (
    BridgeClient,
    BridgeDown,
    BridgeRefused,
    InputChanged,
    LinkDown,
    LinkUp,
)

log = logging.getLogger(__name__)

READ_ATTEMPTS = 5


class BridgeBackend:
    """Every compartment's lock output and inputs on one microcontroller."""

    name = "bridge"
    debounces = True  # the microcontroller debounces (20 ms) and timestamps its inputs

    def __init__(self, compartments: tuple[CompartmentConfig, ...],
                 hardware: BridgeHardware) -> None:
        self._client = BridgeClient(hardware.url, baudrate=hardware.baudrate,
                                    heartbeat_s=hardware.heartbeat_s,
                                    link_timeout_s=hardware.link_timeout_s)
        self._outputs = {c.id: int(c.solenoid_pin) for c in compartments}
        self._maglocks = {c.id for c in compartments if c.lock == "maglock"}
        # input number -> (compartment, role)
        self._inputs = {int(pin): (c.id, name) for c in compartments
                        for name, pin in c.inputs().items()}
        self._levels: dict[int, bool] = {}
        self._task: asyncio.Task[None] | None = None
        self._entered = False

    @property
    def link_up(self) -> bool:
        return bool(self._client.link_up)

    async def start(self, loop: asyncio.AbstractEventLoop, on_input: InputCallback,
                    on_link: LinkCallback, *, link_timeout_s: float = 5.0) -> None:
        """Open the port and wait (``link_timeout_s`` at most) for the microcontroller's
        HELLO, so that start-up reads real inputs. If it is not there, start anyway with
        every compartment in fault, and keep trying in the background."""
        try:
            await self._enter()
            await self._client.wait_link(link_timeout_s)
            await self._read_all()
        except (BridgeDown, BridgeRefused) as exc:
            log.error("firmware bridge not reachable at start: %s", exc)
        self._task = loop.create_task(self._run(on_input, on_link), name="bridge-events")

    async def _enter(self) -> None:
        if not self._entered:
            await self._client.__aenter__()  # raises BridgeDown if the port cannot be opened
            self._entered = True

    async def _run(self, on_input: InputCallback, on_link: LinkCallback) -> None:
        attempt = 0
        while not self._entered:  # the port was missing at start: keep trying
            await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt))
            attempt += 1
            try:
                await self._enter()
            except BridgeDown as exc:
                log.warning("firmware bridge port still unavailable: %s", exc)
        await self._follow(on_input, on_link)

    async def _read_all(self) -> None:
        levels = await self._client.read_inputs()
        self._levels = dict(enumerate(levels))

    async def _follow(self, on_input: InputCallback, on_link: LinkCallback) -> None:
        """Input changes and link changes from the microcontroller, in order. A failing
        callback is logged and the stream followed on: the locks must stay watched."""
        async for event in self._client.events():
            try:
                await self._dispatch(event, on_input, on_link)
            except Exception:
                log.exception("firmware bridge event %r not handled", event)

    async def _dispatch(self, event: object, on_input: InputCallback,
                        on_link: LinkCallback) -> None:
        if isinstance(event, InputChanged):
            self._levels[event.input] = event.level
            target = self._inputs.get(event.input)
            if target is not None:
                on_input(target[0], target[1], event.level)
        elif isinstance(event, LinkUp):
            for attempt in range(READ_ATTEMPTS):  # the compartments stay in fault until read
                try:
                    await self._read_all()
                    break
                except (BridgeDown, BridgeRefused) as exc:
                    log.warning("bridge up but inputs unreadable (%s): %s", attempt + 1, exc)
                    await asyncio.sleep(0.2 * (attempt + 1))
            else:
                return
            log.info("firmware bridge up (boot id %08x%s)", event.peer.boot_id,
                     ", it restarted" if event.restarted else "")
            on_link(True, "restarted" if event.restarted else "up")
        elif isinstance(event, LinkDown):
            log.warning("firmware bridge down: %s", event.reason)
            on_link(False, event.reason)

    def read(self, compartment: str) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for number, (cid, name) in self._inputs.items():
            if cid == compartment:
                # An input the microcontroller has not reported (or does not have) reads
                # as open / unlocked / absent, like a cut wire: never the safe-looking state.
                out[name] = self._levels.get(number, False)
        return out

    def check(self, compartment: str) -> str | None:
        peer = self._client.peer
        if peer is None:
            return None  # not known yet: checked again when the link comes up
        output = self._outputs[compartment]
        if output >= peer.outputs:
            return f"output {output} does not exist: the microcontroller has {peer.outputs}"
        for number, (cid, name) in self._inputs.items():
            if cid == compartment and number >= peer.inputs:
                return (f"{name} input {number} does not exist: the microcontroller has "
                        f"{peer.inputs}")
        return None

    def _check_output(self, compartment: str) -> int:
        output = self._outputs[compartment]
        peer = self._client.peer
        if peer is not None and output >= peer.outputs:
            raise UnlockFailed(f"output {output} does not exist: the microcontroller has "
                               f"{peer.outputs}")
        return output

    async def hold(self, compartment: str) -> None:
        try:
            output = self._check_output(compartment)
            await self._client.set_output(output, True)
        except (UnlockFailed, BridgeDown, BridgeRefused) as exc:
            raise LockFault(f"the maglock did not engage: {exc}") from exc

    async def pulse(self, compartment: str, seconds: float,
                    started: StartedCallback | None = None) -> float:
        output = self._check_output(compartment)
        if compartment in self._maglocks:
            return await self._release(output, seconds, started)
        try:
            granted_ms = await self._client.pulse(output, round(seconds * 1000))
        except BridgeDown as exc:  # the acknowledgement may be what was lost
            raise UnlockFailed(f"firmware bridge: {exc}", maybe_operated=True) from exc
        except BridgeRefused as exc:
            raise UnlockFailed(f"the microcontroller refused: {exc}") from exc
        granted_s = float(granted_ms) / 1000
        if started is not None:
            started(granted_s)  # acknowledged: the coil is on
        await asyncio.sleep(granted_s)  # the microcontroller ends it on its own
        return granted_s

    async def _release(self, output: int, seconds: float,
                       started: StartedCallback | None) -> float:
        """A maglock: off for ``seconds``, then held again."""
        try:
            await self._client.set_output(output, False)
        except BridgeDown as exc:
            raise UnlockFailed(f"firmware bridge: {exc}", maybe_operated=True) from exc
        except BridgeRefused as exc:
            raise UnlockFailed(f"the microcontroller refused: {exc}") from exc
        if started is not None:
            started(seconds)
        await asyncio.sleep(seconds)
        try:
            await self._client.set_output(output, True)
        except (BridgeDown, BridgeRefused) as exc:
            raise LockFault(f"the maglock did not re-engage: {exc}") from exc
        return seconds

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # gather, not suppress(CancelledError): a cancellation of this task that
            # arrives meanwhile must not be swallowed with the child's
            await asyncio.gather(self._task, return_exceptions=True)
        if self.link_up:  # every output off now: a pulse ends, a maglock releases
            for output in self._outputs.values():
                try:
                    await self._client.set_output(output, False)
                except Exception as exc:  # one bad output must not keep the others on
                    log.error("output %d not switched off at exit: %s", output, exc)
        if self._entered:
            await self._client.__aexit__(None, None, None)
