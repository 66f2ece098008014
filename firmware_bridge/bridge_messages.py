"""Typed messages of the firmware-bridge protocol: payload layouts, types, status codes.

Each message is a frozen dataclass with ``TYPE``, ``to_payload()`` and ``from_payload()``;
payload fields are little-endian (docs/firmware-bridge.md, "Message types"). A payload that
is not a valid message raises :class:`PayloadError`, whose ``status`` is what a receiver
answers with; a value out of range when building a message raises ValueError. Framing
lives in :mod:`firmware_bridge.bridge_codec`, which re-exports all of this.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, Self, TypeVar

PROTOCOL_VERSION = 1
MAX_PAYLOAD = 48
MAX_IO = 64  # outputs and inputs an MCU may announce (the INPUTS bitmap is at most 8 bytes)
MAX_FIRMWARE = 32  # bytes of the firmware string in HELLO
_M = TypeVar("_M")


class MessageType(IntEnum):
    """The ``type`` byte. Values not listed are answered with ``UNKNOWN_TYPE``."""

    HELLO = 0x01
    HEARTBEAT = 0x02
    ACK = 0x03
    PULSE = 0x10
    SET_OUTPUT = 0x11
    READ_INPUTS = 0x12
    INPUTS = 0x13
    INPUT_CHANGED = 0x20


class Role(IntEnum):
    HOST = 0
    MCU = 1


class Status(IntEnum):
    """The status byte of an ACK. ``OK`` and ``CAPPED`` are successes."""

    OK = 0x00
    CAPPED = 0x01
    UNKNOWN_TYPE = 0x10
    BAD_LENGTH = 0x11
    BAD_VALUE = 0x12
    BAD_OUTPUT = 0x13
    BUSY = 0x14
    OUTPUT_FAULT = 0x15
    NOT_READY = 0x16
    UNSUPPORTED_VERSION = 0x17

    @property
    def ok(self) -> bool:
        return self in (Status.OK, Status.CAPPED)



class PayloadError(ValueError):
    """A frame's payload is not a valid message; ``status`` is what a receiver answers."""

    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(f"{status.name}: {detail}")
        self.status = status
        self.detail = detail


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def _unpack(fmt: str, payload: bytes, name: str) -> tuple[int, ...]:
    if len(payload) != struct.calcsize(fmt):
        raise PayloadError(
            Status.BAD_LENGTH,
            f"{name} needs {struct.calcsize(fmt)} payload bytes, got {len(payload)}",
        )
    return struct.unpack(fmt, payload)


def _build(cls: type[_M], name: str, *args: Any) -> _M:
    """Construct ``cls(*args)``, turning a range check's ValueError into BAD_VALUE."""
    try:
        return cls(*args)
    except ValueError as exc:
        raise PayloadError(Status.BAD_VALUE, f"{name}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Hello:
    """Sent at boot and while the link is down. The host sends outputs, inputs and
    max_on_ms as 0."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    role: Role
    boot_id: int
    outputs: int = 0
    inputs: int = 0
    max_on_ms: int = 0
    firmware: str = ""
    protocol: int = PROTOCOL_VERSION
    _FMT: ClassVar[str] = "<BBIBBH"

    def __post_init__(self) -> None:
        _check(0 <= self.protocol <= 0xFF, "protocol is a u8")
        _check(0 <= self.boot_id <= 0xFFFFFFFF, "boot_id is a u32")
        _check(0 <= self.outputs <= MAX_IO and 0 <= self.inputs <= MAX_IO,
               f"outputs and inputs are 0..{MAX_IO}")
        _check(0 <= self.max_on_ms <= 0xFFFF, "max_on_ms is a u16")
        _check(len(self.firmware) <= MAX_FIRMWARE, f"firmware is at most {MAX_FIRMWARE} bytes")
        _check(self.firmware.isascii() and self.firmware.isprintable(),
               "firmware is printable ASCII")

    def to_payload(self) -> bytes:
        head = struct.pack(self._FMT, self.protocol, self.role, self.boot_id, self.outputs,
                           self.inputs, self.max_on_ms)
        return head + self.firmware.encode("ascii")

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        size = struct.calcsize(cls._FMT)
        if not size <= len(payload) <= size + MAX_FIRMWARE:
            raise PayloadError(Status.BAD_LENGTH, f"HELLO needs {size}..{size + MAX_FIRMWARE}"
                                                  f" payload bytes, got {len(payload)}")
        protocol, role, boot_id, outputs, inputs, max_on = struct.unpack_from(cls._FMT, payload)
        if role not in tuple(Role):
            raise PayloadError(Status.BAD_VALUE, f"HELLO: unknown role {role}")
        firmware = payload[size:].decode("latin-1")
        return _build(cls, "HELLO", Role(role), boot_id, outputs, inputs, max_on, firmware,
                      protocol)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent every heartbeat period by both sides; never acknowledged."""

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT
    boot_id: int
    uptime_ms: int
    _FMT: ClassVar[str] = "<II"

    def __post_init__(self) -> None:
        _check(0 <= self.boot_id <= 0xFFFFFFFF and 0 <= self.uptime_ms <= 0xFFFFFFFF,
               "boot_id and uptime_ms are u32")

    def to_payload(self) -> bytes:
        return struct.pack(self._FMT, self.boot_id, self.uptime_ms)

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        return _build(cls, "HEARTBEAT", *_unpack(cls._FMT, payload, "HEARTBEAT"))


@dataclass(frozen=True, slots=True)
class Ack:
    """Answers the message whose seq the ACK frame carries. ``value`` is the granted
    on-time for PULSE, an output index for BUSY/OUTPUT_FAULT, the output count for
    BAD_OUTPUT, else 0."""

    TYPE: ClassVar[MessageType] = MessageType.ACK
    acked_type: int
    status: Status
    command_id: int = 0
    value: int = 0
    _FMT: ClassVar[str] = "<BBHH"

    def __post_init__(self) -> None:
        _check(0 <= self.acked_type <= 0xFF, "acked_type is a u8")
        _check(0 <= self.command_id <= 0xFFFF and 0 <= self.value <= 0xFFFF,
               "command_id and value are u16")

    def to_payload(self) -> bytes:
        return struct.pack(self._FMT, self.acked_type, self.status, self.command_id, self.value)

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        acked, status, command_id, value = _unpack(cls._FMT, payload, "ACK")
        if status not in tuple(Status):
            raise PayloadError(Status.BAD_VALUE, f"ACK: unknown status 0x{status:02x}")
        return _build(cls, "ACK", acked, Status(status), command_id, value)


@dataclass(frozen=True, slots=True)
class Pulse:
    """Energise ``output`` for min(duration_ms, the MCU's max_on_ms), then switch it off."""

    TYPE: ClassVar[MessageType] = MessageType.PULSE
    command_id: int
    output: int
    duration_ms: int
    _FMT: ClassVar[str] = "<HBH"

    def __post_init__(self) -> None:
        _check(0 <= self.command_id <= 0xFFFF, "command_id is a u16")
        _check(0 <= self.output <= 0xFF, "output is a u8")
        _check(1 <= self.duration_ms <= 0xFFFF, "duration_ms is 1..65535")

    def to_payload(self) -> bytes:
        return struct.pack(self._FMT, self.command_id, self.output, self.duration_ms)

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        return _build(cls, "PULSE", *_unpack(cls._FMT, payload, "PULSE"))


@dataclass(frozen=True, slots=True)
class SetOutput:
    """Hold ``output`` on (``level`` true) or off until told otherwise (maglocks)."""

    TYPE: ClassVar[MessageType] = MessageType.SET_OUTPUT
    command_id: int
    output: int
    level: bool
    _FMT: ClassVar[str] = "<HBB"

    def __post_init__(self) -> None:
        _check(0 <= self.command_id <= 0xFFFF, "command_id is a u16")
        _check(0 <= self.output <= 0xFF, "output is a u8")

    def to_payload(self) -> bytes:
        return struct.pack(self._FMT, self.command_id, self.output, int(self.level))

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        command_id, output, level = _unpack(cls._FMT, payload, "SET_OUTPUT")
        if level not in (0, 1):
            raise PayloadError(Status.BAD_VALUE, f"SET_OUTPUT: level is 0 or 1, got {level}")
        return _build(cls, "SET_OUTPUT", command_id, output, bool(level))


@dataclass(frozen=True, slots=True)
class ReadInputs:
    """Ask for every input's debounced level; answered by INPUTS with the same seq."""

    TYPE: ClassVar[MessageType] = MessageType.READ_INPUTS

    def to_payload(self) -> bytes:
        return b""

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        _unpack("", payload, "READ_INPUTS")
        return cls()


@dataclass(frozen=True, slots=True)
class Inputs:
    """Every input's debounced level, input 0 first."""

    TYPE: ClassVar[MessageType] = MessageType.INPUTS
    levels: tuple[bool, ...] = field(default=())

    def __post_init__(self) -> None:
        _check(len(self.levels) <= MAX_IO, f"at most {MAX_IO} inputs")

    def to_payload(self) -> bytes:
        bitmap = bytearray((len(self.levels) + 7) // 8)
        for index, level in enumerate(self.levels):
            if level:
                bitmap[index // 8] |= 1 << (index % 8)
        return bytes([len(self.levels)]) + bytes(bitmap)

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        if not payload:
            raise PayloadError(Status.BAD_LENGTH, "INPUTS needs a count byte")
        count = payload[0]
        if count > MAX_IO:
            raise PayloadError(Status.BAD_VALUE, f"INPUTS: at most {MAX_IO} inputs, got {count}")
        if len(payload) != 1 + (count + 7) // 8:
            raise PayloadError(Status.BAD_LENGTH,
                               f"INPUTS of {count} needs {1 + (count + 7) // 8} bytes")
        bits = payload[1:]
        return cls(tuple(bool(bits[i // 8] >> (i % 8) & 1) for i in range(count)))


@dataclass(frozen=True, slots=True)
class InputChanged:
    """An input's debounced level changed at ``mcu_ms`` (MCU uptime in ms, wraps at 2**32)."""

    TYPE: ClassVar[MessageType] = MessageType.INPUT_CHANGED
    input: int
    level: bool
    mcu_ms: int
    _FMT: ClassVar[str] = "<BBI"

    def __post_init__(self) -> None:
        _check(0 <= self.input <= 0xFF, "input is a u8")
        _check(0 <= self.mcu_ms <= 0xFFFFFFFF, "mcu_ms is a u32")

    def to_payload(self) -> bytes:
        return struct.pack(self._FMT, self.input, int(self.level), self.mcu_ms)

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        index, level, mcu_ms = _unpack(cls._FMT, payload, "INPUT_CHANGED")
        if level not in (0, 1):
            raise PayloadError(Status.BAD_VALUE, f"INPUT_CHANGED: level is 0 or 1, got {level}")
        return _build(cls, "INPUT_CHANGED", index, bool(level), mcu_ms)


Message = Hello | Heartbeat | Ack | Pulse | SetOutput | ReadInputs | Inputs | InputChanged
MESSAGE_CLASSES: dict[MessageType, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Heartbeat, Ack, Pulse, SetOutput, ReadInputs, Inputs, InputChanged)
}
#: Types that are answers or keep-alives: never acknowledged, never retried.
UNACKNOWLEDGED = frozenset({MessageType.ACK, MessageType.HEARTBEAT, MessageType.INPUTS})

