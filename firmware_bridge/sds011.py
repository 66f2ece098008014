"""Sans-I/O codec for the Nova Fitness SDS011 particle sensor (UART 9600 8N1, 3.3 V TTL).

Sensor to host, 10-byte frames (Laser Dust Sensor Control Protocol V1.3, section 3)::

    AA C0 PM25_L PM25_H PM10_L PM10_H ID1 ID2 CS AB     a reading (0.1 µg/m³ units)
    AA C5 CMD    D1     D2     D3     ID1 ID2 CS AB     the reply to a command

``CS`` is the low byte of the sum of bytes 2..7. Host to sensor, 19-byte commands::

    AA B4 CMD D1 .. D12 ID1 ID2 CS AB                   CS: low byte of the sum of bytes 2..16

addressed to device ``ID1 ID2`` (``FF FF``: every sensor on the line). The helpers below
build the commands; :class:`Sds011Decoder` turns any byte stream into :class:`SdsReading`,
:class:`SdsReply` and :class:`DecodeError` values and never raises.
docs/sensors-protocols.md is the reference, with checked examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from firmware_bridge.garbage import GARBAGE_RUN_BYTES, SAMPLE_BYTES, GarbageRun

__all__ = [
    "ALL_DEVICES", "COMMAND_BYTES", "FRAME_BYTES", "GARBAGE_RUN_BYTES", "MAX_WORK_PERIOD",
    "Command", "DecodeError", "ErrorKind", "ReportingMode", "Sds011Decoder", "SdsCommand",
    "SdsReading", "SdsReply", "active_mode", "current_reporting_mode",
    "current_work_period", "current_work_state", "encode_command", "firmware_version",
    "parse_command", "query", "query_mode", "set_device_id", "sleep", "work", "work_period",
]

HEAD, TAIL = 0xAA, 0xAB
READING, REPLY, COMMAND = 0xC0, 0xC5, 0xB4
FRAME_BYTES, COMMAND_BYTES = 10, 19
ALL_DEVICES = 0xFFFF
MAX_WORK_PERIOD = 30  # minutes (section 3.5)
_SAMPLE = SAMPLE_BYTES


class Command(IntEnum):
    """The CMD byte (data byte 1) of a command and of its reply (section 3)."""

    REPORTING_MODE = 2  # 3.1: D1 0 query / 1 set, D2 0 active / 1 query
    QUERY_DATA = 4  # 3.2: answered by a reading
    SET_DEVICE_ID = 5  # 3.3: D11 D12 (bytes 13, 14) the new id
    SLEEP_WORK = 6  # 3.4: D1 0 query / 1 set, D2 0 sleep / 1 work
    FIRMWARE_VERSION = 7  # 3.6: replied D1 D2 D3 = year, month, day
    WORKING_PERIOD = 8  # 3.5: D1 0 query / 1 set, D2 0 continuous / 1..30 minutes


class ReportingMode(IntEnum):
    ACTIVE = 0  # a reading every second, the factory default
    QUERY = 1  # a reading only in answer to QUERY_DATA


def encode_command(command: int, data: bytes = b"", device_id: int = ALL_DEVICES) -> bytes:
    """A 19-byte command: ``data`` (at most 12 bytes) padded with zeros.

    Raises ValueError if ``data`` is too long or ``command``/``device_id`` out of range.
    """
    if len(data) > 12 or not (0 <= command <= 0xFF and 0 <= device_id <= 0xFFFF):
        raise ValueError(f"command 0x{command:x}, {len(data)} data bytes, id 0x{device_id:x}")
    body = bytes([command]) + data.ljust(12, b"\x00") + device_id.to_bytes(2, "big")
    return bytes([HEAD, COMMAND]) + body + bytes([sum(body) & 0xFF, TAIL])


def query_mode(device_id: int = ALL_DEVICES) -> bytes:
    """Report only when asked (:func:`query`); the setting survives power-off."""
    return encode_command(Command.REPORTING_MODE, b"\x01\x01", device_id)


def active_mode(device_id: int = ALL_DEVICES) -> bytes:
    """Report every second (or once per working period), the factory default."""
    return encode_command(Command.REPORTING_MODE, b"\x01\x00", device_id)


def current_reporting_mode(device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(Command.REPORTING_MODE, b"", device_id)


def query(device_id: int = ALL_DEVICES) -> bytes:
    """Ask for a reading (query mode); answered by an ``AA C0`` frame."""
    return encode_command(Command.QUERY_DATA, b"", device_id)


def set_device_id(new_id: int, device_id: int = ALL_DEVICES) -> bytes:
    """Give the sensor ``device_id`` the id ``new_id``; it replies with the new id."""
    if not 0 <= new_id <= 0xFFFF:
        raise ValueError(f"device id 0x{new_id:x} out of range")
    return encode_command(Command.SET_DEVICE_ID, bytes(10) + new_id.to_bytes(2, "big"),
                          device_id)


def sleep(device_id: int = ALL_DEVICES) -> bytes:
    """Stop the fan and laser."""
    return encode_command(Command.SLEEP_WORK, b"\x01\x00", device_id)


def work(device_id: int = ALL_DEVICES) -> bytes:
    """Start the fan and laser; readings are stable after 30 s (section 3.4, notes)."""
    return encode_command(Command.SLEEP_WORK, b"\x01\x01", device_id)


def current_work_state(device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(Command.SLEEP_WORK, b"", device_id)


def work_period(minutes: int, device_id: int = ALL_DEVICES) -> bytes:
    """0: work continuously; 1..30: work 30 s, then sleep ``minutes`` * 60 - 30 s, and so
    on. The setting survives power-off. Raises ValueError outside 0..30."""
    if not 0 <= minutes <= MAX_WORK_PERIOD:
        raise ValueError(f"working period {minutes} min is outside 0..{MAX_WORK_PERIOD}")
    return encode_command(Command.WORKING_PERIOD, bytes([1, minutes]), device_id)


def current_work_period(device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(Command.WORKING_PERIOD, b"", device_id)


def firmware_version(device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(Command.FIRMWARE_VERSION, b"", device_id)


@dataclass(frozen=True, slots=True)
class SdsCommand:
    """A host command as the sensor reads it (for simulators and tests)."""

    command: int
    data: bytes  # data bytes 2..13
    device_id: int


def parse_command(raw: bytes) -> SdsCommand | None:
    """The command in 19 bytes ``raw``, or None if they are not one."""
    if len(raw) != COMMAND_BYTES or raw[0] != HEAD or raw[1] != COMMAND or raw[18] != TAIL:
        return None
    if sum(raw[2:17]) & 0xFF != raw[17]:
        return None
    return SdsCommand(raw[2], bytes(raw[3:15]), (raw[15] << 8) | raw[16])


@dataclass(frozen=True, slots=True)
class SdsReading:
    """A measurement in µg/m³ (resolution 0.1) from sensor ``device_id``."""

    pm2_5: float
    pm10: float
    device_id: int

    def values(self) -> dict[str, float]:
        return {"pm2_5": self.pm2_5, "pm10": self.pm10}

    def to_bytes(self) -> bytes:
        """The frame a sensor sends; ValueError outside 0..6553.5 µg/m³."""
        raw = [round(self.pm2_5 * 10), round(self.pm10 * 10)]
        if not all(0 <= r <= 0xFFFF for r in raw) or not 0 <= self.device_id <= 0xFFFF:
            raise ValueError(f"{self} cannot be encoded")
        body = bytes([READING, *raw[0].to_bytes(2, "little"), *raw[1].to_bytes(2, "little"),
                      *self.device_id.to_bytes(2, "big")])
        return _frame(body)


@dataclass(frozen=True, slots=True)
class SdsReply:
    """The reply to command ``command``: ``data`` is bytes 3..5 of the frame."""

    command: int
    data: bytes
    device_id: int

    @property
    def is_set(self) -> bool:
        """A reply to a setting (D1 = 1) rather than to a question (commands 2, 6, 8)."""
        return self.data[0] == 1

    @property
    def value(self) -> int:
        """D2: the reporting mode, the work state (1 working) or the period in minutes."""
        return self.data[1]

    @property
    def firmware_version(self) -> tuple[int, int, int]:
        """Year (2 digits), month and day, for a FIRMWARE_VERSION reply."""
        return self.data[0], self.data[1], self.data[2]

    def to_bytes(self) -> bytes:
        return _frame(bytes([REPLY, self.command, *self.data[:3].ljust(3, b"\x00"),
                             *self.device_id.to_bytes(2, "big")]))


def _frame(body: bytes) -> bytes:
    """``AA`` + body (type byte and 6 data bytes) + checksum of the data + ``AB``."""
    return bytes([HEAD, *body, sum(body[1:]) & 0xFF, TAIL])


class ErrorKind(StrEnum):
    BAD_CHECKSUM = "bad_checksum"  # 10 bytes framed right whose checksum does not match
    BAD_TAIL = "bad_tail"  # "AA C0"/"AA C5" not followed, 8 bytes on, by AB
    GARBAGE = "garbage"  # bytes discarded while looking for "AA C0"/"AA C5"


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Bytes that are not a frame. ``sample``: at most 32 of them. ``skipped``: for
    GARBAGE, how many bytes this run discarded; 0 for the other kinds, whose bytes are
    then discarded (and counted) as garbage until the next frame start."""

    kind: ErrorKind
    sample: bytes
    skipped: int = 0


SdsMessage = SdsReading | SdsReply | DecodeError


class Sds011Decoder:
    """Turns a byte stream, split anywhere, into readings, replies and errors. Never raises.

    It looks for ``AA C0`` or ``AA C5`` and waits for 10 bytes; a bad tail or checksum
    rejects only the ``AA``, so a frame that starts inside a damaged one is still found.
    Between calls it buffers less than one frame. ``errors`` counts BAD_CHECKSUM and
    BAD_TAIL events and GARBAGE *bytes*: every byte that was not part of a frame. A
    garbage run is reported when the next frame arrives, or each
    :data:`GARBAGE_RUN_BYTES` bytes. The output does not depend on how the stream is split.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._garbage = GarbageRun()
        self.frames = 0  # readings decoded
        self.replies = 0
        self.errors: dict[str, int] = {kind.value: 0 for kind in ErrorKind}

    def feed(self, data: bytes) -> list[SdsMessage]:
        """Consume ``data``; return what it completes, in stream order."""
        buf = self._buffer
        buf += data
        out: list[SdsMessage] = []
        i, end = 0, len(buf)
        while True:
            j = buf.find(HEAD, i)
            if j < 0:
                self._skip(buf, i, end, out)
                i = end
                break
            if j > i:
                self._skip(buf, i, j, out)
                i = j
            if end - j < 2:
                break
            kind = buf[j + 1]
            if kind not in (READING, REPLY):
                self._skip(buf, j, j + 1, out)
                i = j + 1
                continue
            stop = j + FRAME_BYTES
            if stop > end:
                break
            if buf[stop - 1] != TAIL:
                out.append(self._error(ErrorKind.BAD_TAIL, buf[j:stop]))
            elif sum(buf[j + 2:j + 8]) & 0xFF != buf[j + 8]:
                out.append(self._error(ErrorKind.BAD_CHECKSUM, buf[j:stop]))
            else:
                self._end_garbage(out)
                out.append(self._message(buf, j))
                i = stop
                continue
            self._skip(buf, j, j + 1, out)
            i = j + 1
        del buf[:i]
        return out

    def _message(self, buf: bytearray, j: int) -> SdsReading | SdsReply:
        device_id = (buf[j + 6] << 8) | buf[j + 7]
        if buf[j + 1] == READING:
            self.frames += 1
            return SdsReading(((buf[j + 3] << 8) | buf[j + 2]) / 10,
                              ((buf[j + 5] << 8) | buf[j + 4]) / 10, device_id)
        self.replies += 1
        return SdsReply(buf[j + 2], bytes(buf[j + 3:j + 6]), device_id)

    def _error(self, kind: ErrorKind, sample: bytes | bytearray) -> DecodeError:
        self.errors[kind] += 1
        return DecodeError(kind, bytes(sample[:_SAMPLE]))

    def _skip(self, buf: bytearray, start: int, stop: int, out: list[SdsMessage]) -> None:
        """Discard ``buf[start:stop]`` as garbage, reporting every full run."""
        self.errors[ErrorKind.GARBAGE] += stop - start
        out.extend(DecodeError(ErrorKind.GARBAGE, sample, n)
                   for sample, n in self._garbage.skip(buf[start:stop]))

    def _end_garbage(self, out: list[SdsMessage]) -> None:
        if (run := self._garbage.end()) is not None:
            out.append(DecodeError(ErrorKind.GARBAGE, *run))
