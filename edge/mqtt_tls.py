"""TLS for the MQTT link: the client context, and a connect that never leaks a socket.

Part of the MQTT link (:mod:`edge.link` builds the context and connects with it); nothing
else uses it.
"""

from __future__ import annotations

import ssl
from typing import Any

import paho.mqtt.client as mqtt

from edge.config import TlsConfig


class TrackingContext(ssl.SSLContext):
    """Remembers the TLS socket it made, so a failed handshake's socket can be closed:
    paho 2.2's ``_ssl_wrap_socket`` leaves it open when ``do_handshake()`` raises."""

    made: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.made = super().wrap_socket(*args, **kwargs)
        return self.made


def tls_context(tls: TlsConfig) -> TrackingContext:
    """Verify the broker against our CA and its name; present our certificate; TLS >= 1.2."""
    context = TrackingContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(tls.ca_file))
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def connect_or_close(client: mqtt.Client, context: TrackingContext | None, host: str,
                      port: int, keepalive: int, **kwargs: Any) -> None:
    """paho's blocking connect (run in an executor); no socket outlives a failure."""
    try:
        client.connect(host, port, keepalive, **kwargs)
    except BaseException:
        if context is not None and context.made is not None:
            context.made.close()
        raise
