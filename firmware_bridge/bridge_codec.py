"""Sans-I/O framing of the firmware-bridge protocol: COBS, CRC-16, a streaming decoder.

A frame on the wire is ``COBS(ver | type | seq | len | payload | crc16) 0x00``: the CRC is
CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over ``ver..payload``, sent big-endian;
payload fields are little-endian. :class:`FrameDecoder` turns any byte stream into
:class:`Frame` and :class:`FrameError` values without ever raising; :func:`decode_message`
turns a frame into a typed message (:mod:`firmware_bridge.bridge_messages`, re-exported
here) or raises :class:`PayloadError` carrying the :class:`Status` a receiver answers with.
docs/firmware-bridge.md is the specification.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from enum import StrEnum

from cobs import cobs  # type: ignore[import-untyped]  # cobs ships no type information

from firmware_bridge.bridge_messages import (
    MAX_FIRMWARE,
    MAX_IO,
    MAX_PAYLOAD,
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    UNACKNOWLEDGED,
    Ack,
    Heartbeat,
    Hello,
    InputChanged,
    Inputs,
    Message,
    MessageType,
    PayloadError,
    Pulse,
    ReadInputs,
    Role,
    SetOutput,
    Status,
)

__all__ = [
    "CRC_BYTES", "DELIMITER", "HEADER_BYTES", "MAX_ENCODED", "MAX_FIRMWARE", "MAX_FRAME",
    "MAX_IO", "MAX_PAYLOAD", "MAX_WIRE", "MESSAGE_CLASSES", "PROTOCOL_VERSION",
    "UNACKNOWLEDGED", "Ack", "Frame", "FrameDecoder", "FrameError", "FrameErrorKind",
    "Heartbeat", "Hello", "InputChanged", "Inputs", "Message", "MessageType", "PayloadError",
    "Pulse", "ReadInputs", "Role", "SetOutput", "Status", "crc16", "decode_message",
    "encode_frame", "encode_message", "frame_bytes",
]

HEADER_BYTES = 4  # ver, type, seq, len
CRC_BYTES = 2
MAX_FRAME = HEADER_BYTES + MAX_PAYLOAD + CRC_BYTES  # 54 bytes before COBS
MAX_ENCODED = MAX_FRAME + 1  # COBS adds one byte per started 254: 55 bytes
MAX_WIRE = MAX_ENCODED + 1  # with the 0x00 delimiter: 56 bytes
DELIMITER = b"\x00"


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: ``crc16(b"123456789") == 0x29B1``."""
    return binascii.crc_hqx(data, 0xFFFF)



# --- frames -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame that passed COBS, CRC, version and length checks. ``type`` is the raw byte."""

    type: int
    seq: int
    payload: bytes


def frame_bytes(type_: int, seq: int, payload: bytes) -> bytes:
    """The unencoded frame ``ver | type | seq | len | payload | crc`` (for docs and tests)."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes([PROTOCOL_VERSION, type_, seq & 0xFF, len(payload)]) + payload
    return body + crc16(body).to_bytes(2, "big")


def encode_frame(type_: int, seq: int, payload: bytes) -> bytes:
    """The bytes on the wire for one frame: COBS-encoded, then the 0x00 delimiter.

    Raises ValueError if ``payload`` is longer than :data:`MAX_PAYLOAD`.
    """
    encoded: bytes = cobs.encode(frame_bytes(type_, seq, payload))
    return encoded + DELIMITER


def encode_message(message: Message, seq: int) -> bytes:
    """``encode_frame`` for a typed message."""
    return encode_frame(message.TYPE, seq, message.to_payload())


def decode_message(frame: Frame) -> Message:
    """The typed message in ``frame``; raises :class:`PayloadError` (UNKNOWN_TYPE,
    BAD_LENGTH or BAD_VALUE) if it is not one."""
    try:
        cls = MESSAGE_CLASSES[MessageType(frame.type)]
    except ValueError:
        raise PayloadError(Status.UNKNOWN_TYPE, f"type 0x{frame.type:02x}") from None
    return cls.from_payload(frame.payload)


class FrameErrorKind(StrEnum):
    BAD_COBS = "bad_cobs"
    BAD_CRC = "bad_crc"
    BAD_VERSION = "bad_version"
    BAD_LENGTH = "bad_length"
    OVERSIZE = "oversize"


@dataclass(frozen=True, slots=True)
class FrameError:
    """Bytes between two delimiters that are not a frame; ``sample``: at most 16 of them."""

    kind: FrameErrorKind
    sample: bytes


class FrameDecoder:
    """Turns a byte stream, split anywhere, into frames and frame errors. Never raises.

    Bytes are collected up to each 0x00; empty frames (consecutive delimiters) are
    ignored. More than :data:`MAX_ENCODED` bytes without a delimiter is one ``OVERSIZE``
    error, and the rest is discarded up to the next 0x00, so the buffer stays bounded.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False
        self.frames = 0
        self.errors: dict[FrameErrorKind, int] = dict.fromkeys(FrameErrorKind, 0)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        out: list[Frame | FrameError] = []
        for chunk_end, part in _split_keep(data):
            if self._discarding:
                if chunk_end:
                    self._discarding = False
                continue
            self._buffer += part
            if len(self._buffer) > MAX_ENCODED:
                out.append(self._error(FrameErrorKind.OVERSIZE, bytes(self._buffer)))
                self._buffer.clear()
                self._discarding = not chunk_end
                continue
            if chunk_end:
                encoded = bytes(self._buffer)
                self._buffer.clear()
                if encoded:
                    out.append(self._decode(encoded))
        return out

    def _error(self, kind: FrameErrorKind, data: bytes) -> FrameError:
        self.errors[kind] += 1
        return FrameError(kind, data[:16])

    def _decode(self, encoded: bytes) -> Frame | FrameError:
        try:
            raw: bytes = cobs.decode(encoded)
        except cobs.DecodeError:
            return self._error(FrameErrorKind.BAD_COBS, encoded)
        if len(raw) < HEADER_BYTES + CRC_BYTES:
            return self._error(FrameErrorKind.BAD_LENGTH, raw)
        if crc16(raw[:-CRC_BYTES]) != int.from_bytes(raw[-CRC_BYTES:], "big"):
            return self._error(FrameErrorKind.BAD_CRC, raw)
        if raw[0] != PROTOCOL_VERSION:
            return self._error(FrameErrorKind.BAD_VERSION, raw)
        if raw[3] != len(raw) - HEADER_BYTES - CRC_BYTES:
            return self._error(FrameErrorKind.BAD_LENGTH, raw)
        self.frames += 1
        return Frame(raw[1], raw[2], raw[HEADER_BYTES:-CRC_BYTES])


def _split_keep(data: bytes) -> list[tuple[bool, bytes]]:
    """``data`` cut at each 0x00: (ends with a delimiter, bytes before it)."""
    parts = data.split(DELIMITER)
    return [(i < len(parts) - 1, part) for i, part in enumerate(parts)]
