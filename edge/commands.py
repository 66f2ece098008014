"""Commands from the platform over MQTT: unsigned ``ping``, and signed commands.

Requests arrive on ``…/cmd`` either as JSON ``{"command": NAME, "id": ID, "args": {...}}``
(only commands registered as unsigned, i.e. ``ping``) or as a signed command, a compact
JWS (:mod:`provisioning.commands`) verified against the platform command keys, addressed
to this device, unexpired, and never seen before (:mod:`edge.replay`). Refusals carry a
reason from :class:`~edge.reasons.Reason` (``unsigned``, ``replayed``, ``bad_signature``,
``wrong_device``, ``expired``...) in the reply and a ``command.rejected`` event.
Replies go to the MQTT 5 response topic with the request's correlation data, or, for
MQTT 3.1.1 clients (or requests without a response topic), to ``…/cmd/result``; they are
``{"id", "command", "ok", "result" | "error"}``. Retained requests are never executed
(a retained command would act again on every reconnect) and a repeated ``id`` gets the
first reply again without acting twice. Signed commands build on this in the access
control layer. See docs/mqtt-api.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from edge import __version__
from edge.clock import Reading
from edge.link import LinkDown, MqttLink, PublishRejected
from edge.reasons import Reason, fault_reason
from edge.replay import ReplayCache
from edge.topics import DeviceTopics
from provisioning.commands import CommandVerifier
from provisioning.errors import TokenRejected

log = logging.getLogger(__name__)

REMEMBERED_IDS = 256
MAX_REQUEST_BYTES = 16 * 1024


@dataclass(frozen=True)
class Request:
    """One parsed command request and where its reply goes. ``token`` is set for a
    signed request (a compact JWS), whose command, id and args come from its claims."""

    command: str
    request_id: str
    args: dict[str, Any]
    reply_topic: str
    correlation: bytes | None
    token: str | None = None


@dataclass(frozen=True)
class Context:
    """Who asked: the operator of a signed command (None for an unsigned request)."""

    operator: str | None
    issued_at: int | None = None


SignedHandler = Callable[[dict[str, Any], Context], Awaitable[dict[str, Any]]]
RecordEvent = Callable[[str, dict[str, Any]], Awaitable[object]]
VerifierSource = Callable[[], CommandVerifier | None]


class CommandError(ValueError):
    """A request that cannot be executed; the message goes back in the reply."""


class Commands:
    """Parses requests on the loop thread, executes them in :meth:`run`, replies."""

    def __init__(self, link: MqttLink, topics: DeviceTopics, *, boot_id: str,
                 verifier: CommandVerifier | VerifierSource | None = None,
                 replay: ReplayCache | None = None,
                 clock: Callable[[], Reading] | None = None,
                 record: RecordEvent | None = None) -> None:
        self._link = link
        self._topics = topics
        self._boot_id = boot_id
        self._verifier = verifier
        self._replay = replay
        self._clock = clock
        self._record = record
        self._queue: asyncio.Queue[Request] = asyncio.Queue(maxsize=64)
        self._replies: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._handlers: dict[str, tuple[SignedHandler, bool]] = {
            "ping": (self._ping, False)}
        self.rejected = 0
        self.ignored_retained = 0

    def register(self, name: str, handler: SignedHandler, *, signed: bool = True) -> None:
        """Add a command; ``signed`` ones run only from a verified, unreplayed JWS."""
        self._handlers[name] = (handler, signed)

    def on_message(self, message: mqtt.MQTTMessage) -> None:
        """The link's message handler: validate, then queue for :meth:`run`."""
        if message.retain:
            self.ignored_retained += 1
            log.warning("ignored a retained command on %s", message.topic)
            return
        try:
            request = self._parse(message)
        except CommandError as exc:
            self.rejected += 1
            log.warning("rejected a command: %s", exc)
            return
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            self.rejected += 1
            log.warning("command %s dropped: too many waiting", request.request_id)

    def _parse(self, message: mqtt.MQTTMessage) -> Request:
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        if len(message.payload) > MAX_REQUEST_BYTES:
            raise CommandError(f"request larger than {MAX_REQUEST_BYTES} bytes")
        reply_topic = response_topic or self._topics.cmd_result
        corr = correlation if response_topic else None
        if message.payload.startswith(b"ey"):  # a compact JWS: verified in run()
            token = message.payload.decode("ascii", "replace").strip()
            return Request("", _unverified_jti(token), {}, reply_topic, corr, token)
        try:
            body = json.loads(message.payload)
        except ValueError as exc:
            raise CommandError(f"not JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("command"), str) \
                or not isinstance(body.get("id"), str) or not body["id"]:
            raise CommandError("expected {\"command\": str, \"id\": str, \"args\": {...}}")
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise CommandError("args must be an object")
        return Request(body["command"], body["id"][:64], args, reply_topic, corr)

    async def run(self) -> None:
        """Execute requests one at a time and reply. Cancel to stop."""
        while True:
            request = await self._queue.get()
            # Unsigned requests are answered from memory when repeated; a signed one goes
            # through the replay cache every time, so a replay is refused and recorded.
            reply = self._replies.get(request.request_id) if request.token is None else None
            if reply is None:
                reply = await self._execute(request)
                if request.token is None:
                    self._remember(request.request_id, reply)
            try:
                await self._link.publish(
                    request.reply_topic, json.dumps(reply, separators=(",", ":")).encode(),
                    qos=1, correlation=request.correlation)
            except (LinkDown, PublishRejected) as exc:
                log.info("reply to %s not delivered: %s", request.request_id, exc)

    async def _execute(self, request: Request) -> dict[str, Any]:
        try:
            name, args, context = self._authenticate(request)
        except CommandError as exc:
            self.rejected += 1
            await self._note_rejection(request, str(exc))
            return {"id": request.request_id, "command": request.command, "ok": False,
                    "error": str(exc)}
        reply: dict[str, Any] = {"id": request.request_id, "command": name}
        entry = self._handlers.get(name)
        if entry is None:
            return {**reply, "ok": False, "error": f"unknown command {name!r}"}
        handler, needs_signature = entry
        if needs_signature and context.operator is None:
            self.rejected += 1
            await self._note_rejection(request, Reason.UNSIGNED)
            return {**reply, "ok": False,
                    "error": f"{Reason.UNSIGNED}: this command must be signed"}
        try:
            return {**reply, "ok": True, "result": await handler(args, context)}
        except CommandError as exc:
            return {**reply, "ok": False, "error": str(exc)}
        except Exception as exc:  # supervised: a failing command never stops the others
            log.exception("command %s failed", request.command)
            return {**reply, "ok": False, "error": f"internal error: {type(exc).__name__}"}

    def _authenticate(self, request: Request) -> tuple[str, dict[str, Any], Context]:
        """The command, args and operator of a request; raise CommandError if refused."""
        if request.token is None:
            return request.command, request.args, Context(None)
        verifier = self._verifier() if callable(self._verifier) else self._verifier
        if verifier is None or self._replay is None or self._clock is None:
            raise CommandError(f"{Reason.UNSIGNED}: no command keys are trusted on this device")
        reading = self._clock()
        # set_time exists to repair a wrong clock, so its own times are not checked against
        # it; the clock refuses a signed time behind its floor, so a replay cannot pull the
        # time back.
        unchecked = _unverified_claim(request.token, "cmd") == "set_time"
        try:
            command = verifier.verify(request.token, now=None if unchecked else reading.ts)
        except TokenRejected as exc:
            reason = fault_reason(exc.fault, audience=Reason.WRONG_DEVICE)
            raise CommandError(f"{reason}: {exc.detail}") from exc
        try:
            first = self._replay.first_use(command.nonce, expires_at=command.expires_at,
                                           now=reading.ts)
        except OSError as exc:  # unrecorded, it could run again: refuse it
            raise CommandError(f"{Reason.STORAGE_FAULT}: cannot record the nonce: {exc}"
                               ) from exc
        if not first:
            raise CommandError(f"{Reason.REPLAYED}: this command was already executed")
        return command.name, command.args, Context(command.operator, command.issued_at)

    async def _note_rejection(self, request: Request, why: str) -> None:
        log.warning("command %s refused: %s", request.request_id or "?", why)
        if self._record is not None:
            await self._record("command.rejected", {"id": request.request_id[:64],
                                                    "reason": why.split(":", maxsplit=1)[0],
                                                    "detail": why[:200]})

    def _remember(self, request_id: str, reply: dict[str, Any]) -> None:
        self._replies[request_id] = reply
        while len(self._replies) > REMEMBERED_IDS:
            self._replies.popitem(last=False)

    async def _ping(self, args: dict[str, Any], context: Context) -> dict[str, Any]:
        return {"pong": round(time.time(), 3), "boot_id": self._boot_id, "version": __version__}


def _unverified_claim(token: str, name: str) -> object:
    """A claim read without verification: only to route and to echo an id."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get(name)
    except (IndexError, ValueError, AttributeError):
        return None


def _unverified_jti(token: str) -> str:
    jti = _unverified_claim(token, "jti")
    return jti[:64] if isinstance(jti, str) else ""
