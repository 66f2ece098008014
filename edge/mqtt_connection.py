"""The paho adapter: the one module where paho-mqtt's callbacks cross into asyncio.

Adapter layer under :mod:`edge.link`. Each connection gets a fresh paho ``Client``
(built by the link) driven by the event loop's own selector (``add_reader``/``add_writer``,
as aiomqtt does), so every callback and every paho call runs on the loop thread; the one
exception, the blocking TCP/TLS connect that the link runs in an executor, happens while
nothing else touches that client, and the socket callbacks it fires are handed to the loop.
paho's callbacks become asyncio futures: CONNACK, the end of the connection, and one
future per publish that completes on PUBACK (or fails with :class:`LinkDown` if the
connection is lost first, :class:`PublishRejected` if the broker refuses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.errors import CurbsideError

log = logging.getLogger(__name__)

MessageHandler = Callable[[mqtt.MQTTMessage], None]


class LinkDown(CurbsideError, ConnectionError):
    """The broker is not connected, or the connection was lost before PUBACK."""


class PublishRejected(CurbsideError, ConnectionError):
    """The broker answered a publish with a failure reason code (MQTT 5)."""


class MqttConnection:
    """One paho client and its socket, registered with the running event loop.

    ``connack`` completes when the broker accepts the connection (or fails with
    :class:`LinkDown`); ``closed`` completes with the reason once the connection is over;
    ``subscribed`` is set once every subscription has its SUBACK. ``on_message`` runs on
    the loop thread for each message received; its failures are logged and counted in
    ``callback_errors``, never raised into paho.
    """

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
        """Subscribe to each topic at QoS 1; ``subscribed`` is set once all are acknowledged."""
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
        """paho's keepalive bookkeeping: a PINGREQ when due, a drop if PINGRESP is overdue."""
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
