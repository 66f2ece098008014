"""A small blocking MQTT session over mutual TLS, for enrolment (device and service side).

Adapter layer: the only place :mod:`provisioning` touches paho's network thread. Messages
arrive on a :class:`queue.Queue` (or a handler called on paho's thread); every wait has a
timeout in seconds and raises :class:`SessionError` when it runs out or the broker refuses.
"""

from __future__ import annotations

import queue
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from provisioning.errors import ProvisioningError


class SessionError(ProvisioningError, ConnectionError):
    """The broker could not be reached, refused us, or did not answer in time."""


@dataclass(frozen=True)
class ClientTls:
    """Our side of mutual TLS: the CA that signed the broker, our certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def context(self) -> _TrackingContext:
        """Verify the broker's certificate and name against ``ca_file``; TLS 1.2 or later."""
        context = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname, CERT_REQUIRED
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


class _TrackingContext(ssl.SSLContext):
    """Remembers its TLS socket so a failed handshake's socket can be closed: paho 2.2's
    ``_ssl_wrap_socket`` leaves it open when ``do_handshake()`` raises (as edge.mqtt_tls)."""

    made: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.made = super().wrap_socket(*args, **kwargs)
        return self.made


Handler = Callable[[mqtt.MQTTMessage], None]


class TlsSession:
    """``with TlsSession(host, port, tls) as s:`` -> connected (MQTT 5, clean start)."""

    def __init__(self, host: str, port: int, tls: ClientTls, *, client_id: str | None = None,
                 on_message: Handler | None = None, timeout_s: float = 10.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._handler = on_message or self.messages.put
        self._connected = threading.Event()
        self._connack: ReasonCode | None = None
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._subacked = threading.Condition()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"curbside-{uuid.uuid4().hex[:12]}",
                                   protocol=MQTTProtocolVersion.MQTTv5)
        self._context = tls.context()
        self._client.tls_set_context(self._context)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = lambda _c, _u, message: self._handler(message)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        self._connack = reason
        self._connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      codes: list[ReasonCode], properties: Any) -> None:
        with self._subacked:
            self._subacks[mid] = codes
            self._subacked.notify_all()

    def open(self) -> None:
        """Connect (TLS handshake included) and wait for a successful CONNACK."""
        try:
            self._client.connect(self.host, self.port, keepalive=30, clean_start=True)
        except (OSError, ssl.SSLError) as exc:
            if self._context.made is not None:
                self._context.made.close()
            raise SessionError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(self.timeout_s) or self._connack is None or (
                self._connack.is_failure):
            self.close()
            raise SessionError(f"{self.host}:{self.port} refused the connection: {self._connack}")

    def subscribe(self, topic: str, qos: int = 1) -> int:
        """Subscribe and wait for the SUBACK; return the granted QoS.

        Raises :class:`SessionError` if the broker refuses (its ACL, for instance).
        """
        result, mid = self._client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise SessionError(f"subscribe {topic}: {mqtt.error_string(result)}")
        with self._subacked:
            if not self._subacked.wait_for(lambda: mid in self._subacks, self.timeout_s):
                raise SessionError(f"subscribe {topic}: no SUBACK within {self.timeout_s}s")
            codes = self._subacks.pop(mid)
        if not codes or codes[0].is_failure:
            raise SessionError(f"subscribe {topic}: refused ({codes[0] if codes else '?'})")
        return int(codes[0].value)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish and, for QoS 1, wait for the PUBACK.

        A broker ACL drops a forbidden publish without telling an MQTT 3.1.1 client; do not
        read a PUBACK as delivery.
        """
        info = self._client.publish(topic, payload, qos=qos)
        if qos > 0:
            info.wait_for_publish(self.timeout_s)
            if not info.is_published():
                raise SessionError(f"publish {topic}: no PUBACK within {self.timeout_s}s")

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue a publish without waiting: the one to use from a message handler, which
        runs on paho's thread (waiting there for the PUBACK would wait forever)."""
        self._client.publish(topic, payload, qos=qos)

    def close(self) -> None:
        """Disconnect and stop paho's network thread (joined)."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> TlsSession:
        self.open()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
