"""A badge reader on a pty: the agent opens ``reader.path`` like a real serial device."""

from __future__ import annotations

import contextlib
import os
import pty
import tty
from types import TracebackType

from firmware_bridge.badge_reader import BadgeScan, encode_scan


class PtyBadgeReader:
    """The device side of a pseudo-terminal, speaking the reader's line protocol."""

    def __init__(self) -> None:
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: bytes pass as a UART would
        self.path = os.ttyname(self._slave)
        self.lines_sent = 0

    def present(self, compartment: str, credential: str) -> None:
        """A member scans ``credential`` asking for ``compartment``."""
        self.send_raw(encode_scan(BadgeScan(compartment, credential)))
        self.lines_sent += 1

    def send_raw(self, data: bytes) -> None:
        """Put arbitrary bytes on the line (noise, garbage, half a line)."""
        view = memoryview(data)
        while view:
            written = os.write(self._master, view)
            view = view[written:]

    def close(self) -> None:
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):  # already closed
                os.close(fd)

    def __enter__(self) -> PtyBadgeReader:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
