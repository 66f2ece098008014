"""Sans-I/O codec for the Plantower PMS5003 particle sensor (UART 9600 8N1, 3.3 V TTL).

Sensor to host, every frame starts ``0x42 0x4D`` ("BM") and a big-endian length that
counts the bytes after it; the last two bytes are the u16 sum of all bytes before them
(PMS5003 data manual V2.3, Appendix I):

* a data frame, length 28: 13 big-endian u16 words (PM1.0/PM2.5/PM10 "CF=1", the same
  "under atmospheric environment", six particle counts per 0.1 L, one reserved word);
* a command acknowledgement, length 4: ``CMD DATA``. The manual does not document it;
  sensors answer a change-mode or sleep command with it (see docs/sensors-protocols.md).

Host to sensor, 7-byte commands ``42 4D CMD DATAH DATAL LRCH LRCL`` (Appendix II), built
by :func:`encode_command` and the helpers below. :class:`Pms5003Decoder` turns any byte
stream into :class:`PmsFrame`, :class:`PmsAck` and :class:`DecodeError` values and never
raises. docs/sensors-protocols.md is the reference, with checked examples.
"""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass
from enum import IntEnum, StrEnum

from firmware_bridge.garbage import GARBAGE_RUN_BYTES, SAMPLE_BYTES, GarbageRun

__all__ = [
    "ACK_LENGTH", "COMMAND_BYTES", "DATA_LENGTH", "GARBAGE_RUN_BYTES", "MAX_FRAME_BYTES", "START",
    "Command", "DecodeError", "ErrorKind", "Pms5003Decoder", "PmsAck", "PmsFrame",
    "active_mode", "checksum", "encode_command", "parse_command", "passive_mode",
    "read_passive", "sleep", "wake",
]

START = b"BM"  # 0x42 0x4D
DATA_LENGTH = 2 * 13 + 2  # "Frame length = 2x13+2 (data+check bytes)", Appendix I
ACK_LENGTH = 4  # CMD, DATA and the two check bytes
MAX_FRAME_BYTES = 4 + DATA_LENGTH  # 32
COMMAND_BYTES = 7
_WORDS = struct.Struct(">13H")
_SAMPLE = SAMPLE_BYTES


class Command(IntEnum):
    """The CMD byte of a host command (Appendix II)."""

    CHANGE_MODE = 0xE1  # DATAL 0x00 passive, 0x01 active
    READ_PASSIVE = 0xE2
    SLEEP_SET = 0xE4  # DATAL 0x00 sleep, 0x01 wake up


def checksum(data: bytes) -> int:
    """The check code: the sum of ``data``'s bytes, low 16 bits."""
    return sum(data) & 0xFFFF


def encode_command(command: int, data: int = 0) -> bytes:
    """``42 4D CMD DATAH DATAL LRCH LRCL``; raises ValueError outside 0..0xFF / 0..0xFFFF."""
    if not (0 <= command <= 0xFF and 0 <= data <= 0xFFFF):
        raise ValueError(f"command 0x{command:x} data 0x{data:x} out of range")
    body = START + bytes([command]) + data.to_bytes(2, "big")
    return body + checksum(body).to_bytes(2, "big")


def passive_mode() -> bytes:
    """Answer only :func:`read_passive` from now on (acknowledged by ``PmsAck(0xE1, 0)``)."""
    return encode_command(Command.CHANGE_MODE, 0)


def active_mode() -> bytes:
    """Stream frames unasked, the power-up default (acknowledged by ``PmsAck(0xE1, 1)``)."""
    return encode_command(Command.CHANGE_MODE, 1)


def read_passive() -> bytes:
    """In passive mode, ask for one data frame."""
    return encode_command(Command.READ_PASSIVE, 0)


def sleep() -> bytes:
    """Stop the fan and laser (acknowledged by ``PmsAck(0xE4, 0)``)."""
    return encode_command(Command.SLEEP_SET, 0)


def wake() -> bytes:
    """Start the fan and laser again; not acknowledged. Readings settle after ~30 s."""
    return encode_command(Command.SLEEP_SET, 1)


def parse_command(raw: bytes) -> tuple[int, int] | None:
    """``(CMD, DATA)`` of a 7-byte host command, or None if ``raw`` is not one."""
    if len(raw) != COMMAND_BYTES or raw[:2] != START:
        return None
    if checksum(raw[:5]) != int.from_bytes(raw[5:], "big"):
        return None
    return raw[2], int.from_bytes(raw[3:5], "big")


@dataclass(frozen=True, slots=True)
class PmsFrame:
    """One data frame. Concentrations in µg/m³; counts: particles above a diameter per
    0.1 L of air. ``pm1_0``/``pm2_5``/``pm10`` are the "atmospheric environment" values, the
    ones to report outdoors; the ``_cf1`` ones are for factory conditions (Appendix I,
    note). ``reserved`` is data word 13 as received."""

    pm1_0_cf1: int
    pm2_5_cf1: int
    pm10_cf1: int
    pm1_0: int
    pm2_5: int
    pm10: int
    count_0_3: int
    count_0_5: int
    count_1_0: int
    count_2_5: int
    count_5_0: int
    count_10: int
    reserved: int = 0

    def values(self) -> dict[str, float]:
        """The atmospheric concentrations in µg/m³: ``pm1_0``, ``pm2_5``, ``pm10``."""
        return {"pm1_0": float(self.pm1_0), "pm2_5": float(self.pm2_5),
                "pm10": float(self.pm10)}

    def to_bytes(self) -> bytes:
        """The 32 bytes a sensor sends for this frame; ValueError if a word exceeds u16."""
        words = astuple(self)
        if not all(0 <= w <= 0xFFFF for w in words):
            raise ValueError(f"a data word is outside 0..65535: {words}")
        body = START + DATA_LENGTH.to_bytes(2, "big") + _WORDS.pack(*words)
        return body + checksum(body).to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class PmsAck:
    """The sensor's acknowledgement of command ``command`` with DATAL ``data``."""

    command: int
    data: int

    def to_bytes(self) -> bytes:
        body = START + ACK_LENGTH.to_bytes(2, "big") + bytes([self.command, self.data])
        return body + checksum(body).to_bytes(2, "big")


class ErrorKind(StrEnum):
    BAD_CHECKSUM = "bad_checksum"  # a frame whose check code does not match
    BAD_LENGTH = "bad_length"  # "BM" followed by a length that is neither 28 nor 4
    GARBAGE = "garbage"  # bytes discarded while looking for "BM"


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Bytes that are not a frame. ``sample``: at most 32 of them. ``skipped``: for
    GARBAGE, how many bytes this run discarded; 0 for the other kinds, whose bytes are
    then discarded (and counted) as garbage until the next "BM"."""

    kind: ErrorKind
    sample: bytes
    skipped: int = 0


PmsMessage = PmsFrame | PmsAck | DecodeError


class Pms5003Decoder:
    """Turns a byte stream, split anywhere, into frames, acks and errors. Never raises.

    It looks for "BM", reads the length and waits for the whole frame; a bad length or
    check code rejects only the "B", so a frame that starts inside a damaged one is still
    found. Between calls it buffers less than one frame. ``errors`` counts BAD_CHECKSUM and
    BAD_LENGTH events and GARBAGE *bytes*: every byte that was not part of a frame or ack.
    A garbage run is reported when the next frame or ack arrives, or each
    :data:`GARBAGE_RUN_BYTES` bytes. The output does not depend on how the stream is split.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._garbage = GarbageRun()
        self.frames = 0  # data frames decoded
        self.acks = 0
        self.errors: dict[str, int] = {kind.value: 0 for kind in ErrorKind}

    def feed(self, data: bytes) -> list[PmsMessage]:
        """Consume ``data``; return what it completes, in stream order."""
        buf = self._buffer
        buf += data
        out: list[PmsMessage] = []
        i, end = 0, len(buf)
        while True:
            j = buf.find(START, i)
            if j < 0:  # keep a last "B": it may start a frame
                keep = 1 if end > i and buf[end - 1] == START[0] else 0
                self._skip(buf, i, end - keep, out)
                i = end - keep
                break
            self._skip(buf, i, j, out)
            i = j
            if end - j < 4:
                break
            length = (buf[j + 2] << 8) | buf[j + 3]
            if length not in (DATA_LENGTH, ACK_LENGTH):
                out.append(self._error(ErrorKind.BAD_LENGTH, buf[j:j + 4]))
                self._skip(buf, j, j + 1, out)
                i = j + 1
                continue
            stop = j + 4 + length
            if stop > end:
                break
            if sum(buf[j:stop - 2]) & 0xFFFF != (buf[stop - 2] << 8) | buf[stop - 1]:
                out.append(self._error(ErrorKind.BAD_CHECKSUM, buf[j:stop]))
                self._skip(buf, j, j + 1, out)
                i = j + 1
                continue
            self._end_garbage(out)
            if length == DATA_LENGTH:
                self.frames += 1
                out.append(PmsFrame(*_WORDS.unpack_from(buf, j + 4)))
            else:
                self.acks += 1
                out.append(PmsAck(buf[j + 4], buf[j + 5]))
            i = stop
        del buf[:i]
        return out

    def _error(self, kind: ErrorKind, sample: bytes | bytearray) -> DecodeError:
        self.errors[kind] += 1
        return DecodeError(kind, bytes(sample[:_SAMPLE]))

    def _skip(self, buf: bytearray, start: int, stop: int, out: list[PmsMessage]) -> None:
        """Discard ``buf[start:stop]`` as garbage, reporting every full run."""
        self.errors[ErrorKind.GARBAGE] += stop - start
        out.extend(DecodeError(ErrorKind.GARBAGE, sample, n)
                   for sample, n in self._garbage.skip(buf[start:stop]))

    def _end_garbage(self, out: list[PmsMessage]) -> None:
        if (run := self._garbage.end()) is not None:
            out.append(DecodeError(ErrorKind.GARBAGE, *run))
