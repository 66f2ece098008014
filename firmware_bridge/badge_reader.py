"""Sans-I/O decoder for the line-oriented badge reader protocol.

The reader (a kiosk's QR scanner with a keypad, or a door reader on a serial bus) sends
one ASCII line per scan, terminated by LF (a preceding CR is ignored)::

    <compartment> SP <credential> LF

``compartment`` is 1..16 of ``[A-Za-z0-9_-]``, or an action: ``!`` and a name
(``!audit`` asks for audit mode); ``credential`` is 1..1024 of
``[A-Za-z0-9_.-]`` (a compact JWS). Blank lines are ignored. Anything else is a
:class:`GarbageLine`: counted and skipped by the caller, never fatal. A line longer than
:data:`MAX_LINE_BYTES` is discarded up to its terminating LF. See docs/protocols.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

MAX_LINE_BYTES = 1100  # compartment + space + a 1024-character credential, with room to spare
_LINE = re.compile(rb"(!?[A-Za-z0-9_-]{1,16}) ([A-Za-z0-9_.-]{1,1024})")


@dataclass(frozen=True, slots=True)
class BadgeScan:
    """A member presented ``credential`` asking for ``compartment`` (or an action,
    ``!name``)."""

    compartment: str
    credential: str


class GarbageKind(StrEnum):
    """Why a line was not a scan."""

    TOO_LONG = "too_long"
    BAD_SYNTAX = "bad_syntax"


@dataclass(frozen=True, slots=True)
class GarbageLine:
    """A line that is not a scan; ``sample`` holds at most its first 32 bytes, for logs."""

    kind: GarbageKind
    sample: bytes


ReaderMessage = BadgeScan | GarbageLine


class BadgeReaderDecoder:
    """Turns a byte stream into :class:`BadgeScan` and :class:`GarbageLine` messages.

    Feed it chunks as they arrive, split anywhere; the output does not depend on where.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long line, waiting for its LF

    def feed(self, data: bytes) -> list[ReaderMessage]:
        """Consume ``data``; return the messages of every line it completes."""
        out: list[ReaderMessage] = []
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                self._discarding = False
                continue
            message = _parse_line(line)
            if message is not None:
                out.append(message)
        if len(self._buffer) > MAX_LINE_BYTES:
            if not self._discarding:
                out.append(GarbageLine(GarbageKind.TOO_LONG, bytes(self._buffer[:32])))
            self._discarding = True
            self._buffer.clear()
        return out


def _parse_line(line: bytes) -> ReaderMessage | None:
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip():
        return None
    if len(line) > MAX_LINE_BYTES:
        return GarbageLine(GarbageKind.TOO_LONG, line[:32])
    match = _LINE.fullmatch(line)
    if match is None:
        return GarbageLine(GarbageKind.BAD_SYNTAX, line[:32])
    return BadgeScan(match.group(1).decode("ascii"), match.group(2).decode("ascii"))


def encode_scan(scan: BadgeScan) -> bytes:
    """The bytes a reader sends for ``scan`` (used by simulators and tests)."""
    return f"{scan.compartment} {scan.credential}\r\n".encode("ascii")
