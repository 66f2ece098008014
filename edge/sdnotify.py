"""systemd's notify protocol, written by hand: a datagram to ``$NOTIFY_SOCKET``.

``READY=1`` once the agent is really up, ``WATCHDOG=1`` pings while every critical loop
is healthy (:mod:`edge.health`), ``STATUS=...`` for ``systemctl status``, ``STOPPING=1``
on the way out. Without ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op. An
abstract socket (``@name``) is supported. The protocol is one ``sendto`` of a few
bytes: a library would add a dependency for eight lines.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the service manager, if there is one."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address = address or None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines; False if there is no manager or it cannot be told."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:  # the manager went away: nothing to tell, nothing to stop
            log.debug("notify %s failed: %s", fields, exc)
            return False


def watchdog_interval_s() -> float | None:
    """Half of systemd's ``WatchdogSec`` (``$WATCHDOG_USEC``), if it is for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None
