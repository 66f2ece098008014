"""The MQTT link: the one module where paho-mqtt's callbacks cross into asyncio.

Each connection gets a fresh paho ``Client`` driven by the event loop's own selector
(``add_reader``/``add_writer``, as aiomqtt does), so every callback and every paho call
runs on the loop thread; only the blocking TCP/TLS connect runs in an executor, while
nothing else touches that client. :meth:`MqttLink.run` supervises the connection:
reconnects with capped exponential backoff and full jitter (:class:`ReconnectBackoff`),
after a failed attempt and after a lost connection alike, logs every wait, and publishes
the retained birth message on each connect (the LWT covers a dead agent).

:meth:`MqttLink.publish` returns when the broker has acknowledged (PUBACK) and raises
:class:`LinkDown` if the connection is lost first; the caller keeps the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge import __version__
from edge.config import MqttConfig
from edge.errors import CurbsideError
from edge.mqtt_tls import connect_or_close, tls_context
from edge.topics import DeviceTopics

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"  # user property "schema" on every MQTT 5 publish
MessageHandler = Callable[[mqtt.MQTTMessage], None]
CONNECT_TIMEOUT_S = 10.0
MISC_INTERVAL_S = 1.0  # keepalive bookkeeping (paho's loop_misc)
GOODBYE_TIMEOUT_S = 2.0  # a clean stop waits this long for the broker at most
# A connection that stays up this long (or 2 x keepalive, if longer: see stable_after_s)
# counts as healthy, and the next reconnect starts from reconnect_min_s again; a shorter one
# counts as a failed attempt. What takes a connection only to drop it (an authorisation
# plugin, a load balancer with no healthy backend, a clone of this device with the same
# client id taking the session over at its next retry) mostly does so within a second or
# two of CONNACK, so such a loop backs off to reconnect_max_s. And whatever drops longer
# connections, the backoff starts over at most once per STABLE_AFTER_MIN_S: at worst 100
# quick reconnects a second for a fleet of 1,000. Resetting on every connect instead let a
# connect-then-drop loop spin at about 600 connections a second per device (local broker).
STABLE_AFTER_MIN_S = 10.0


class LinkDown(CurbsideError, ConnectionError):
    """The broker is not connected, or the connection was lost before PUBACK."""


class PublishRejected(CurbsideError, ConnectionError):
    """The broker answered a publish with a failure reason code (MQTT 5)."""


class LinkState(StrEnum):
    """``CLOSED`` once :meth:`MqttLink.run` has been cancelled: it will not reconnect."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


def backoff_window(attempt: int, base_s: float, cap_s: float) -> float:
    """The upper end (seconds) of the full-jitter range after ``attempt`` failures in a row
    (0-based): ``min(cap, base * 2**attempt)``, never below ``base``."""
    return max(min(cap_s, base_s * 2.0 ** min(attempt, 32)), base_s)


def backoff_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    window = backoff_window(attempt, base_s, cap_s)
    return random.uniform(0, window)  # noqa: S311  # jitter, not cryptography


def stable_after_s(keepalive_s: float) -> float:
    """How long (seconds) a connection must stay up before the backoff starts over.

    At least 2 x keepalive: by then the connection has carried a PINGREQ/PINGRESP and
    outlived the broker's keepalive deadline (1.5 x keepalive, MQTT 3.1.1 and 5.0 section
    3.1.2.10), so a middlebox or broker that drops quiet or unwelcome connections would
    already have dropped it; and never less than :data:`STABLE_AFTER_MIN_S`.
    """
    return max(STABLE_AFTER_MIN_S, 2.0 * keepalive_s)


class ReconnectBackoff:
    """When to try the broker again: capped exponential backoff with full jitter.

    Each delay is uniform in ``[0, window_s]``, the window being ``base_s * 2**attempt``
    capped at ``cap_s``. A failed attempt to connect and a connection lost before it had
    been up ``stable_after_s`` both count as failures and double the window; a connection
    lost after that starts it over at ``base_s``, so a whole street cut at once spreads its
    reconnects over ``base_s`` and a short blip still ends quickly. Pure but for ``rng``
    (by default a private, randomly seeded one). Raises ``ValueError`` unless
    ``0 < base_s <= cap_s`` and ``stable_after_s >= 0``.
    """

    def __init__(self, base_s: float, cap_s: float, stable_after_s: float, *,
                 rng: random.Random | None = None) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, not {base_s} and {cap_s}")
        if stable_after_s < 0:
            raise ValueError("stable_after_s is seconds, not negative")
        self.base_s = base_s
        self.cap_s = cap_s
        self.stable_after_s = stable_after_s
        self.attempt = 0  # failures since the last stable connection
        self._rng = rng if rng is not None else random.Random()  # noqa: S311  # jitter

    @property
    def window_s(self) -> float:
        """The next delay is drawn from ``[0, window_s]``."""
        return backoff_window(self.attempt, self.base_s, self.cap_s)

    def after_failure(self) -> float:
        """An attempt to connect failed: the seconds to wait before the next one."""
        delay = self._rng.uniform(0, self.window_s)
        self.attempt += 1
        return delay

    def after_loss(self, up_for_s: float) -> float:
        """A connection was lost after ``up_for_s`` seconds up: the seconds to wait before
        reconnecting (from a window of ``base_s`` again if it had been up long enough)."""
        if up_for_s >= self.stable_after_s:
            self.attempt = 0
        return self.after_failure()


class _Connection:
    """One paho client and its socket, registered with the running event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: mqtt.Client,
                 on_message: MessageHandler | None = None) -> None:
        self._loop = loop
        self._on_message_handler = on_message
        self._loop_thread = threading.get_ident()
        self.client = client
        self.connack: asyncio.Future[None] = loop.create_future()
        # A failed attempt may leave no waiter: retrieve the outcome so asyncio stays quiet.
        self.connack.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.closed: asyncio.Future[str] = loop.create_future()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._sock: Any = None
        self._aborted = False
        self.callback_errors = 0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._suback_waiting: set[int] = set()
        self.subscribed = asyncio.Event()  # set once every subscription is acknowledged
        client.on_socket_open = lambda c, u, sock: self._on_loop(self._add_reader, sock)
        client.on_socket_close = lambda c, u, sock: self._on_loop(self._forget_socket, sock)
        client.on_socket_register_write = lambda c, u, sock: self._on_loop(self._add_writer, sock)
        client.on_socket_unregister_write = lambda c, u, sock: self._on_loop(
            self._remove_writer, sock
        )

    def _on_loop(self, fn: Callable[[Any], None], sock: Any) -> None:
        # Socket callbacks fire on the executor thread during connect(), or from paho's
        # __del__ wherever the client is collected; everything else runs on the loop thread.
        def run() -> None:
            if not self._aborted:  # once over, paho closes its own socket
                fn(sock)

        if threading.get_ident() == self._loop_thread:
            run()
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                self._loop.call_soon_threadsafe(run)

    def _add_reader(self, sock: Any) -> None:
        if sock.fileno() < 0:
            return
        self._sock = sock
        self._loop.add_reader(sock, self._readable)

    def _readable(self) -> None:
        try:
            self.client.loop_read()
            # TLS may hold decrypted bytes that select() cannot see.
            while self._sock is not None and getattr(self._sock, "pending", lambda: 0)():
                self.client.loop_read()
        except Exception as exc:  # whatever failed in paho, the connection is not trusted
            log.exception("MQTT read failed; dropping the connection")
            self.abort(f"read failed: {exc}")

    def subscribe(self, topics: tuple[str, ...]) -> None:
        for topic in topics:
            _, mid = self.client.subscribe(topic, qos=1)
            if mid is not None:
                self._suback_waiting.add(mid)
        if not self._suback_waiting:
            self.subscribed.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any,
                      properties: Any) -> None:
        if any(code.is_failure for code in codes):
            log.error("broker refused a subscription: %s", codes)
        self._suback_waiting.discard(mid)
        if not self._suback_waiting:
            self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        handler = self._on_message_handler
        if handler is None:
            return
        try:
            handler(message)
        except Exception:  # a failing handler must not take paho's read loop down
            self.callback_errors += 1
            log.exception("handler of a message on %s failed", message.topic)

    def _add_writer(self, sock: Any) -> None:
        if sock.fileno() >= 0:
            self._loop.add_writer(sock, self.client.loop_write)

    def _remove_writer(self, sock: Any) -> None:
        if sock.fileno() >= 0:
            self._loop.remove_writer(sock)

    def _forget_socket(self, sock: Any) -> None:
        if sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._sock = None

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        if self.connack.done():
            return
        if reason.is_failure:
            self.connack.set_exception(LinkDown(f"broker refused the connection: {reason}"))
        else:
            self.connack.set_result(None)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Any) -> None:
        why = str(reason)
        if not self.connack.done():
            self.connack.set_exception(LinkDown(f"disconnected before CONNACK: {why}"))
        if not self.closed.done():
            self.closed.set_result(why)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkDown(f"connection lost before PUBACK: {why}"))
        self._pending.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Any) -> None:
        future = self._pending.pop(mid, None)
        if future is None or future.done():
            return
        if reason.is_failure:
            future.set_exception(PublishRejected(f"broker rejected message {mid}: {reason}"))
        else:
            future.set_result(None)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                properties: Properties | None = None) -> asyncio.Future[None]:
        """Send one message; the future completes on PUBACK (QoS 1) or when written (QoS 0)."""
        if self.closed.done():
            raise LinkDown("not connected")
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkDown(f"publish failed: {mqtt.error_string(info.rc)}")
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[info.mid] = future
        if info.is_published():  # QoS 0 already written: paho will not call back again
            self._pending.pop(info.mid)
            future.set_result(None)
        return future

    def misc(self) -> None:
        self.client.loop_misc()

    def abort(self, why: str = "connection aborted") -> None:
        """Drop the socket without a DISCONNECT (so the broker sends the LWT)."""
        self._aborted = True
        # Ours (registered with the loop) and paho's (maybe never registered: a connect
        # that failed during the TLS or MQTT handshake) are usually the same socket.
        for sock in {id(s): s for s in (self._sock, self.client.socket()) if s}.values():
            if sock is self._sock:
                self._forget_socket(sock)
            with contextlib.suppress(OSError):
                sock.close()
        self._sock = None
        if not self.closed.done():
            self.closed.set_result(why)
        unspecified = ReasonCode(PacketTypes.DISCONNECT, identifier=0x80)
        self._on_disconnect(self.client, None, None, unspecified, None)


class MqttLink:
    """Keeps this device connected to its broker and publishes with acknowledgement.

    ``subscriptions`` are (re)subscribed at QoS 1 on every connection and their messages
    go to ``on_message`` on the loop thread; ``on_connected`` runs (as a task of the link)
    after each connection is up, e.g. to republish the retained state snapshot. ``backoff``
    decides the wait before each reconnect; by default from the config's ``reconnect_min_s``,
    ``reconnect_max_s`` and :func:`stable_after_s` of its ``keepalive_s``.
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
        self._conn: _Connection | None = None
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

    async def _serve(self, conn: _Connection) -> str:
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

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        context = tls_context(self._config.tls) if self._config.tls is not None else None
        client = self._new_client(context)
        conn = _Connection(loop, client, self._on_message)
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

    async def _disconnect(self, conn: _Connection) -> None:
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
