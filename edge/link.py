"""The MQTT link: keeps this device connected to its broker, publishes with acknowledgement.

Connection layer over the paho adapter (:mod:`edge.mqtt_connection`), which turns each
connection's callbacks into asyncio futures on the loop. :meth:`MqttLink.run` supervises
the connection: it builds a fresh paho ``Client`` for each attempt, runs only the blocking
TCP/TLS connect in an executor, reconnects with capped exponential backoff and full jitter
(:class:`~edge.backoff.ReconnectBackoff`), after a failed attempt and after a lost
connection alike, logs every wait, and publishes the retained birth message on each
connect (the LWT covers a dead agent).

:meth:`MqttLink.publish` returns when the broker has acknowledged (PUBACK) and raises
:class:`LinkDown` if the connection is lost first; the caller keeps the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge import __version__
from edge.backoff import ReconnectBackoff, stable_after_s
from edge.config import MqttConfig
from edge.mqtt_connection import LinkDown, MessageHandler, MqttConnection, PublishRejected
from edge.mqtt_tls import connect_or_close, tls_context
from edge.topics import DeviceTopics

# The link's errors are raised by its connections (edge.mqtt_connection); callers take them
# from here, with the link.
__all__ = [
    "CONNECT_TIMEOUT_S",
    "GOODBYE_TIMEOUT_S",
    "MISC_INTERVAL_S",
    "SCHEMA_VERSION",
    "LinkDown",
    "LinkState",
    "MessageHandler",
    "MqttLink",
    "PublishRejected",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"  # user property "schema" on every MQTT 5 publish
CONNECT_TIMEOUT_S = 10.0
MISC_INTERVAL_S = 1.0  # keepalive bookkeeping (paho's loop_misc)
GOODBYE_TIMEOUT_S = 2.0  # a clean stop waits this long for the broker at most


class LinkState(StrEnum):
    """``CLOSED`` once :meth:`MqttLink.run` has been cancelled: it will not reconnect."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


class MqttLink:
    """Keeps this device connected to its broker and publishes with acknowledgement.

    ``subscriptions`` are (re)subscribed at QoS 1 on every connection and their messages
    go to ``on_message`` on the loop thread; ``on_connected`` runs (as a task of the link)
    after each connection is up, e.g. to republish the retained state snapshot. ``backoff``
    decides the wait before each reconnect; by default from the config's ``reconnect_min_s``,
    ``reconnect_max_s`` and :func:`~edge.backoff.stable_after_s` of its ``keepalive_s``.
    """

    def __init__(
        self,
        config: MqttConfig,
        topics: DeviceTopics,
        *,
        boot_id: str,
        on_state: Callable[[LinkState, str], None] | None = None,
        subscriptions: tuple[str, ...] = (),
        on_message: MessageHandler | None = None,
        on_connected: Callable[[], Awaitable[None]] | None = None,
        backoff: ReconnectBackoff | None = None,
    ) -> None:
        self._config = config
        self._topics = topics
        self._boot_id = boot_id
        self._on_state = on_state
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connected = on_connected
        self.backoff = backoff if backoff is not None else ReconnectBackoff(
            config.reconnect_min_s, config.reconnect_max_s, stable_after_s(config.keepalive_s))
        self._conn: MqttConnection | None = None
        self._up = asyncio.Event()
        self.state = LinkState.DOWN
        self.connections = 0  # connections made since start
        self.telemetry_expiry_s = config.telemetry_expiry_s

    @property
    def is_v5(self) -> bool:
        return self._config.protocol == "5"

    def properties(self, *, expiry_s: int | None = None, correlation: bytes | None = None
                   ) -> Properties | None:
        """PUBLISH properties (MQTT 5 only): schema version, message expiry, correlation."""
        if not self.is_v5:
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: unannotated
        props.UserProperty = [("schema", SCHEMA_VERSION)]
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        if correlation is not None:
            props.CorrelationData = correlation
        return props

    def _set_state(self, state: LinkState, detail: str = "") -> None:
        if state is not self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(state, detail)

    async def wait_up(self) -> None:
        """Return once the link is connected."""
        await self._up.wait()

    async def wait_subscribed(self) -> None:
        """Return once connected and every subscription has its SUBACK."""
        while True:
            await self._up.wait()
            conn = self._conn
            if conn is not None:
                await conn.subscribed.wait()
                return

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
        expiry_s: int | None = None, correlation: bytes | None = None,
    ) -> None:
        """Publish and wait for the broker's acknowledgement; raise :class:`LinkDown`."""
        conn = self._conn
        if conn is None:
            raise LinkDown("not connected")
        props = self.properties(expiry_s=expiry_s, correlation=correlation)
        await conn.publish(topic, payload, qos, retain, props)

    async def run(self) -> None:
        """Connect, stay connected, reconnect forever. Cancel to stop: the state is then
        ``CLOSED``, after the goodbye if connected."""
        target = f"{self._config.host}:{self._config.port}"
        backoff = self.backoff
        try:
            while True:
                self._set_state(LinkState.CONNECTING)
                try:
                    conn = await self._connect()
                except (OSError, ssl.SSLError, LinkDown, TimeoutError) as exc:
                    delay = backoff.after_failure()
                    log.warning("broker %s unreachable (attempt %d): %s; retry in %.2fs",
                                target, backoff.attempt, exc, delay)
                    self._set_state(LinkState.DOWN, str(exc))
                else:
                    log.info("connected to broker %s", target)
                    since = time.monotonic()
                    why = await self._serve(conn)
                    up_for = time.monotonic() - since
                    # Never straight back: a broker that drops every connection would see a
                    # hot loop, and devices cut at the same instant would return in step.
                    delay = backoff.after_loss(up_for)
                    log.warning("lost broker %s after %.1fs: %s; reconnect in %.2fs "
                                "(attempt %d)", target, up_for, why, delay, backoff.attempt)
                    self._set_state(LinkState.DOWN, why)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self._set_state(LinkState.CLOSED, "stopped")
            raise

    async def _serve(self, conn: MqttConnection) -> str:
        self._conn = conn
        self.connections += 1
        self._up.set()
        self._set_state(LinkState.UP)
        hook: asyncio.Task[None] | None = None
        try:
            conn.subscribe(self._subscriptions)
            if self._on_connected is not None:
                hook = asyncio.create_task(self._run_hook(self._on_connected), name="on-connect")
            birth = self._status(online=True)
            # Not awaited: the birth message needs no answer to let events flow. If the
            # connection is already gone, the loop below notices.
            with contextlib.suppress(LinkDown):
                conn.publish(self._topics.status, birth, 1, True).add_done_callback(_consume)
            while not conn.closed.done():
                conn.misc()
                await asyncio.wait({conn.closed}, timeout=MISC_INTERVAL_S)
            return conn.closed.result()
        finally:
            if hook is not None:
                hook.cancel()
                await asyncio.gather(hook, return_exceptions=True)
            self._up.clear()
            self._conn = None
            if not conn.closed.done():  # cancelled while connected: say goodbye
                await self._disconnect(conn)

    @staticmethod
    async def _run_hook(hook: Callable[[], Awaitable[None]]) -> None:
        try:
            await hook()
        except (LinkDown, PublishRejected) as exc:
            log.info("on-connect work interrupted: %s", exc)
        except Exception:  # supervised: a failing hook is logged, the link carries on
            log.exception("on-connect work failed")

    async def _connect(self) -> MqttConnection:
        loop = asyncio.get_running_loop()
        context = tls_context(self._config.tls) if self._config.tls is not None else None
        client = self._new_client(context)
        conn = MqttConnection(loop, client, self._on_message)
        cfg = self._config
        kwargs: dict[str, Any] = {}
        if cfg.protocol == "5":
            kwargs["clean_start"] = True
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the connect fails, and the link would never stop.
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await loop.run_in_executor(None, lambda: connect_or_close(
                    client, context, cfg.host, cfg.port, cfg.keepalive_s, **kwargs))
                await asyncio.shield(conn.connack)
        except BaseException:
            conn.abort()
            raise
        return conn

    def _new_client(self, context: ssl.SSLContext | None) -> mqtt.Client:
        cfg = self._config
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"curbside-{self._topics.site}-{self._topics.device}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        client.connect_timeout = CONNECT_TIMEOUT_S
        if context is not None:
            client.tls_set_context(context)
        client.will_set(self._topics.status, self._status(online=False), qos=1, retain=True)
        return client

    def _status(self, *, online: bool) -> bytes:
        body: dict[str, Any] = {"online": online, "boot_id": self._boot_id}
        if online:
            body["version"] = __version__
        return json.dumps(body, separators=(",", ":")).encode()

    async def _disconnect(self, conn: MqttConnection) -> None:
        """Say goodbye: retained offline status, then DISCONNECT; bounded in time."""
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await conn.publish(self._topics.status, self._status(online=False), 1, True)
                conn.client.disconnect()
                await asyncio.shield(conn.closed)
        except (LinkDown, PublishRejected, TimeoutError) as exc:
            log.info("broker goodbye incomplete: %s", exc)
        finally:
            conn.abort()


def _consume(future: asyncio.Future[None]) -> None:
    """Retrieve a fire-and-forget publish's outcome so asyncio does not warn about it."""
    if not future.cancelled() and future.exception() is not None:
        log.info("status publish not acknowledged: %s", future.exception())
