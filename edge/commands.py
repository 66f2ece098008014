"""Commands from the platform over MQTT: the plumbing, and ``ping``.

Requests arrive on ``…/cmd`` as JSON ``{"command": NAME, "id": ID, "args": {...}}``.
Replies go to the MQTT 5 response topic with the request's correlation data, or, for
MQTT 3.1.1 clients (or requests without a response topic), to ``…/cmd/result``; they are
``{"id", "command", "ok", "result" | "error"}``. Retained requests are never executed
(a retained command would act again on every reconnect) and a repeated ``id`` gets the
first reply again without acting twice. Signed commands build on this in the access
control layer. See docs/mqtt-api.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from edge import __version__
from edge.link import LinkDown, MqttLink, PublishRejected
from edge.topics import DeviceTopics

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
REMEMBERED_IDS = 256
MAX_REQUEST_BYTES = 16 * 1024


@dataclass(frozen=True)
class Request:
    """One parsed command request and where its reply goes."""

    command: str
    request_id: str
    args: dict[str, Any]
    reply_topic: str
    correlation: bytes | None


class CommandError(ValueError):
    """A request that cannot be executed; the message goes back in the reply."""


class Commands:
    """Parses requests on the loop thread, executes them in :meth:`run`, replies."""

    def __init__(self, link: MqttLink, topics: DeviceTopics, *, boot_id: str) -> None:
        self._link = link
        self._topics = topics
        self._boot_id = boot_id
        self._queue: asyncio.Queue[Request] = asyncio.Queue(maxsize=64)
        self._replies: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._handlers: dict[str, Handler] = {"ping": self._ping}
        self.rejected = 0
        self.ignored_retained = 0

    def register(self, name: str, handler: Handler) -> None:
        self._handlers[name] = handler

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
        return Request(body["command"], body["id"][:64], args,
                       response_topic or self._topics.cmd_result,
                       correlation if response_topic else None)

    async def run(self) -> None:
        """Execute requests one at a time and reply. Cancel to stop."""
        while True:
            request = await self._queue.get()
            reply = self._replies.get(request.request_id)
            if reply is None:
                reply = await self._execute(request)
                self._remember(request.request_id, reply)
            try:
                await self._link.publish(
                    request.reply_topic, json.dumps(reply, separators=(",", ":")).encode(),
                    qos=1, correlation=request.correlation)
            except (LinkDown, PublishRejected) as exc:
                log.info("reply to %s not delivered: %s", request.request_id, exc)

    async def _execute(self, request: Request) -> dict[str, Any]:
        reply: dict[str, Any] = {"id": request.request_id, "command": request.command}
        handler = self._handlers.get(request.command)
        if handler is None:
            return {**reply, "ok": False, "error": f"unknown command {request.command!r}"}
        try:
            return {**reply, "ok": True, "result": await handler(request.args)}
        except CommandError as exc:
            return {**reply, "ok": False, "error": str(exc)}
        except Exception as exc:  # supervised: a failing command never stops the others
            log.exception("command %s failed", request.command)
            return {**reply, "ok": False, "error": f"internal error: {type(exc).__name__}"}

    def _remember(self, request_id: str, reply: dict[str, Any]) -> None:
        self._replies[request_id] = reply
        while len(self._replies) > REMEMBERED_IDS:
            self._replies.popitem(last=False)

    async def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": round(time.time(), 3), "boot_id": self._boot_id, "version": __version__}
