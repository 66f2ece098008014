"""The serial line of a simulated device: a pty whose far end the agent opens.

Every device emulator (air sensors, battery monitors, the bridge microcontroller) talks
through one :class:`PtyLine`: raw mode (no echo, no line editing: bytes pass as a UART
would), a non-blocking master (with nobody reading, bytes are lost, as on a UART), and
a wake pipe so the emulator's thread, waiting in :meth:`PtyLine.receive`, can be woken
at once (a plug, a command, closing).
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import tty

CLOSED = None  # what receive() returns once the pty is gone


class PtyLine:
    """One pty: ``path`` for the agent, ``send``/``receive`` for the device side."""

    def __init__(self, *, blocking_writes: bool = False) -> None:
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        if not blocking_writes:
            os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()

    def send(self, data: bytes) -> None:
        """Put ``data`` on the line; what the far end does not read in time is lost."""
        view = memoryview(data)
        with contextlib.suppress(BlockingIOError, OSError):  # nobody reading: lost
            while view:
                view = view[os.write(self._master, view):]

    def receive(self, timeout_s: float) -> bytes | None:
        """What arrived within ``timeout_s`` (b"" if nothing, or woken), None once the pty
        is gone."""
        try:
            ready, _, _ = select.select([self._master, self._wake_r], [], [], timeout_s)
        except (OSError, ValueError):  # closed under us
            return CLOSED
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_r, 4096)
        if self._master not in ready:
            return b""
        try:
            return os.read(self._master, 4096)
        except BlockingIOError:
            return b""
        except OSError:  # the pty is gone
            return CLOSED

    def wake(self) -> None:
        """Make a thread waiting in :meth:`receive` return now."""
        with contextlib.suppress(OSError):  # closed: nobody to wake
            os.write(self._wake_w, b"\x01")

    def close(self) -> None:
        """Close every descriptor. Idempotent."""
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):  # already closed
                os.close(fd)
