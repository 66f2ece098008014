"""Sans-I/O codec for the JBD (Jiabaida, "Xiaoxiang") smart BMS UART protocol.

9600 8N1, request/response, 16-bit values big-endian. Every frame, either way, is
``0xDD b1 b2 len data[len] chk_hi chk_lo 0x77``: a request has ``b1`` = 0xA5 (read) or
0x5A (write) and ``b2`` the register; a response has ``b1`` the register and ``b2`` the
status (0x00 ok, 0x80 error). The checksum is 0x10000 minus the sum of ``b2``, ``len`` and
the data bytes, sent big-endian. Registers read here: 0x03 basic information, 0x04 cell
voltages, 0x05 hardware version. :class:`JbdDecoder` turns the BMS's bytes into typed
messages and never raises; the ``encode_*`` functions are the BMS side, for the simulator
and tests. docs/battery-protocols.md is the specification, with worked examples.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import IntEnum, StrEnum

__all__ = [
    "BAUDRATE", "MAX_FRAME", "PROTECTION_BITS", "DecodeError", "JbdBasicInfo",
    "JbdCellVoltages", "JbdDecoder", "JbdError", "JbdErrorKind", "JbdHardwareVersion",
    "JbdMessage", "JbdRequest", "JbdRequestDecoder", "Protection", "Register", "checksum",
    "encode_basic_info", "encode_cell_voltages", "encode_error", "encode_hardware_version",
    "encode_request", "encode_response", "read_basic_info", "read_cell_voltages",
    "read_hardware_version",
]

BAUDRATE = 9600
START, END = 0xDD, 0x77
READ, WRITE = 0xA5, 0x5A
STATUS_OK, STATUS_ERROR = 0x00, 0x80
MAX_FRAME = 7 + 255  # start, b1, b2, len, 255 data bytes, checksum, end
BASIC_INFO_FIXED = 23  # basic-information bytes before the temperatures
KELVIN_OFFSET = 2731  # temperatures are sent in 0.1 K: °C = (raw - 2731) / 10
SAMPLE_BYTES = 16


class Register(IntEnum):
    BASIC_INFO = 0x03
    CELL_VOLTAGES = 0x04
    HARDWARE_VERSION = 0x05


class Protection(StrEnum):
    """Bits of the protection status word, in bit order (bit 0 first)."""

    CELL_OVERVOLTAGE = "cell_overvoltage"
    CELL_UNDERVOLTAGE = "cell_undervoltage"
    PACK_OVERVOLTAGE = "pack_overvoltage"
    PACK_UNDERVOLTAGE = "pack_undervoltage"
    CHARGE_OVERTEMPERATURE = "charge_overtemperature"
    CHARGE_UNDERTEMPERATURE = "charge_undertemperature"
    DISCHARGE_OVERTEMPERATURE = "discharge_overtemperature"
    DISCHARGE_UNDERTEMPERATURE = "discharge_undertemperature"
    CHARGE_OVERCURRENT = "charge_overcurrent"
    DISCHARGE_OVERCURRENT = "discharge_overcurrent"
    SHORT_CIRCUIT = "short_circuit"
    FRONT_END_IC_ERROR = "front_end_ic_error"
    MOS_SOFTWARE_LOCK = "mos_software_lock"
    RESERVED_13 = "reserved_13"  # bits 13..15 are reserved; named so no bit is lost
    RESERVED_14 = "reserved_14"
    RESERVED_15 = "reserved_15"


PROTECTION_BITS: dict[str, int] = {flag.value: bit for bit, flag in enumerate(Protection)}


def checksum(body: bytes) -> int:
    """0x10000 minus the sum of ``body`` (``b2``, ``len`` and data), modulo 0x10000."""
    return -sum(body) & 0xFFFF


def _frame(b1: int, b2: int, data: bytes) -> bytes:
    if len(data) > 255:
        raise ValueError(f"{len(data)} data bytes: a frame carries at most 255")
    body = bytes([b2, len(data)]) + data
    return bytes([START, b1]) + body + checksum(body).to_bytes(2, "big") + bytes([END])


def encode_request(register: int, data: bytes = b"", *, write: bool = False) -> bytes:
    """The host's request: ``read_basic_info() == bytes.fromhex("dda50300fffd77")``."""
    return _frame(WRITE if write else READ, register, data)


def read_basic_info() -> bytes:
    return encode_request(Register.BASIC_INFO)


def read_cell_voltages() -> bytes:
    return encode_request(Register.CELL_VOLTAGES)


def read_hardware_version() -> bytes:
    return encode_request(Register.HARDWARE_VERSION)


def encode_response(register: int, data: bytes, status: int = STATUS_OK) -> bytes:
    """The BMS's response carrying ``data`` (ValueError if over 255 bytes)."""
    return _frame(register, status, data)


def encode_error(register: int) -> bytes:
    """The BMS refusing a request: status 0x80, no data."""
    return encode_response(register, b"", STATUS_ERROR)


# --- messages ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class JbdBasicInfo:
    """Register 0x03, in SI units. ``current_a`` is positive while charging.

    ``protection`` names the protection bits set (:class:`Protection`). The raw fields after
    the documented ones keep a decoded frame re-encodable byte for byte: ``production_date``
    packed as sent, ``balance`` (bit n: cell n+1 balancing), ``software_version`` (0x10 is
    1.0) and ``extra``, bytes newer firmware sends after the temperatures.
    """

    voltage_v: float
    current_a: float
    remaining_ah: float
    nominal_ah: float
    cycles: int
    soc_pct: int
    protection: frozenset[str]
    charge_fet: bool
    discharge_fet: bool
    cell_count: int
    temperatures_c: tuple[float, ...]
    production_date: int = 0
    balance: int = 0
    software_version: int = 0
    extra: bytes = b""

    @property
    def manufactured(self) -> date | None:
        """``production_date`` unpacked (year - 2000 in bits 15..9, month 8..5, day 4..0),
        or None if it is not a date."""
        raw = self.production_date
        try:
            return date(2000 + (raw >> 9), (raw >> 5) & 0x0F, raw & 0x1F)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class JbdCellVoltages:
    """Register 0x04: each cell's voltage, cell 1 first (never empty)."""

    cells_v: tuple[float, ...]

    @property
    def min_v(self) -> float:
        return min(self.cells_v)

    @property
    def max_v(self) -> float:
        return max(self.cells_v)


@dataclass(frozen=True, slots=True)
class JbdHardwareVersion:
    """Register 0x05: the model string (each byte one character, Latin-1)."""

    model: str


@dataclass(frozen=True, slots=True)
class JbdError:
    """The BMS answered ``register`` with a non-zero status (0x80: refused)."""

    register: int
    status: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class JbdRequest:
    """A host request (what the BMS side decodes)."""

    register: int
    data: bytes = b""
    write: bool = False


class JbdErrorKind(StrEnum):
    BAD_CHECKSUM = "bad_checksum"
    BAD_END = "bad_end"  # no 0x77 where the length says the frame ends
    BAD_PAYLOAD = "bad_payload"  # a sound frame whose data does not fit its register
    UNKNOWN_REGISTER = "unknown_register"
    TRUNCATED = "truncated"  # the line went idle in the middle of a frame


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Bytes that began a frame but are not one; ``sample``: at most 16 of them."""

    kind: JbdErrorKind
    sample: bytes


JbdMessage = JbdBasicInfo | JbdCellVoltages | JbdHardwareVersion | JbdError


# --- payloads ----------------------------------------------------------------------------

_BASIC = struct.Struct(">HhHHHHHHHBBBBB")  # the 23 bytes before the temperatures


def _raw(value: float, per_unit: int) -> int:
    return round(value * per_unit)


def encode_basic_info(info: JbdBasicInfo) -> bytes:
    """The BMS's response frame for ``info``. Raises ValueError for a value out of its
    field's range or an unknown protection name."""
    unknown = set(info.protection) - set(PROTECTION_BITS)
    if unknown:
        raise ValueError(f"unknown protection flags {sorted(unknown)}")
    bits = sum(1 << PROTECTION_BITS[name] for name in info.protection)
    fet = int(info.charge_fet) | int(info.discharge_fet) << 1
    try:
        temps = [_raw(t, 10) + KELVIN_OFFSET for t in info.temperatures_c]
        data = _BASIC.pack(
            _raw(info.voltage_v, 100), _raw(info.current_a, 100), _raw(info.remaining_ah, 100),
            _raw(info.nominal_ah, 100), info.cycles, info.production_date,
            info.balance & 0xFFFF, info.balance >> 16, bits, info.software_version,
            info.soc_pct, fet, info.cell_count, len(temps),
        ) + struct.pack(f">{len(temps)}H", *temps) + info.extra
    except (struct.error, OverflowError, ValueError) as exc:  # round() of inf or NaN
        raise ValueError(f"basic information out of range: {exc}") from exc
    return encode_response(Register.BASIC_INFO, data)


def encode_cell_voltages(cells: JbdCellVoltages | Sequence[float]) -> bytes:
    """The BMS's response frame for these cell voltages (V; sent in mV). Raises
    ValueError for no cells, more than 127, or a voltage outside 0..65.535 V."""
    volts = cells.cells_v if isinstance(cells, JbdCellVoltages) else tuple(cells)
    if not 1 <= len(volts) <= 127:
        raise ValueError(f"{len(volts)} cells: 1 to 127 fit in a frame")
    try:
        data = struct.pack(f">{len(volts)}H", *(_raw(v, 1000) for v in volts))
    except (struct.error, OverflowError, ValueError) as exc:
        raise ValueError(f"cell voltage out of range: {exc}") from exc
    return encode_response(Register.CELL_VOLTAGES, data)


def encode_hardware_version(model: str) -> bytes:
    """The BMS's response frame naming its model (Latin-1, at most 255 characters)."""
    return encode_response(Register.HARDWARE_VERSION, model.encode("latin-1"))


def _basic_info(data: bytes) -> JbdBasicInfo | None:
    if len(data) < BASIC_INFO_FIXED:
        return None
    (volt, amp, rem, nom, cycles, made, bal_lo, bal_hi, bits, version, soc, fet, cells,
     ntc) = _BASIC.unpack_from(data)
    end = BASIC_INFO_FIXED + 2 * ntc
    if len(data) < end:
        return None
    temps = struct.unpack_from(f">{ntc}H", data, BASIC_INFO_FIXED)
    return JbdBasicInfo(
        voltage_v=volt / 100, current_a=amp / 100, remaining_ah=rem / 100,
        nominal_ah=nom / 100, cycles=cycles, soc_pct=soc,
        protection=frozenset(flag for bit, flag in enumerate(Protection) if bits >> bit & 1),
        charge_fet=bool(fet & 1), discharge_fet=bool(fet & 2), cell_count=cells,
        temperatures_c=tuple((t - KELVIN_OFFSET) / 10 for t in temps),
        production_date=made, balance=bal_lo | bal_hi << 16, software_version=version,
        extra=data[end:],
    )


def _message(register: int, status: int, data: bytes) -> JbdMessage | JbdErrorKind:
    if status != STATUS_OK:
        return JbdError(register, status, data)
    if register == Register.BASIC_INFO:
        return _basic_info(data) or JbdErrorKind.BAD_PAYLOAD
    if register == Register.CELL_VOLTAGES:
        if not data or len(data) % 2:
            return JbdErrorKind.BAD_PAYLOAD
        mv = struct.unpack(f">{len(data) // 2}H", data)
        return JbdCellVoltages(tuple(v / 1000 for v in mv))
    if register == Register.HARDWARE_VERSION:
        return JbdHardwareVersion(data.decode("latin-1"))
    return JbdErrorKind.UNKNOWN_REGISTER


# --- framing -----------------------------------------------------------------------------


class _Framer:
    """Finds ``0xDD b1 b2 len data chk 0x77`` frames in a byte stream.

    A 0xDD whose ``b1``/``b2`` cannot start a frame of this direction is noise. A
    candidate that fails its end byte or checksum is an error, and the search resumes
    at the byte after its 0xDD, so a frame hidden in it is still found (errors of
    candidates inside a failed one are not reported again). At most one candidate is
    held: the buffer never exceeds :data:`MAX_FRAME` bytes between calls.
    """

    def __init__(self, header_ok: Callable[[int, int], bool]) -> None:
        self._header_ok = header_ok
        self._buffer = bytearray()
        self._shadow = 0  # bytes still ahead that belong to a failed candidate
        self.discarded_bytes = 0

    def _drop(self, count: int) -> None:
        del self._buffer[:count]
        self._shadow = max(0, self._shadow - count)

    def scan(self, data: bytes, *, idle: bool = False) -> list[bytes | DecodeError]:
        out: list[bytes | DecodeError] = []
        self._buffer += data
        buf = self._buffer
        while buf:
            start = buf.find(START)
            if start != 0:
                skip = len(buf) if start < 0 else start
                self.discarded_bytes += skip
                self._drop(skip)
                continue
            if len(buf) >= 3 and not self._header_ok(buf[1], buf[2]):
                self.discarded_bytes += 1
                self._drop(1)
                continue
            total = 7 + buf[3] if len(buf) >= 4 else MAX_FRAME + 1
            if len(buf) < total:
                if not idle:
                    break
                self._fail(JbdErrorKind.TRUNCATED, bytes(buf), out)
                continue
            candidate = bytes(buf[:total])
            if candidate[-1] != END:
                self._fail(JbdErrorKind.BAD_END, candidate, out)
            elif checksum(candidate[2:-3]) != int.from_bytes(candidate[-3:-1], "big"):
                self._fail(JbdErrorKind.BAD_CHECKSUM, candidate, out)
            else:
                self._drop(total)
                out.append(candidate)
        return out

    def _fail(self, kind: JbdErrorKind, candidate: bytes, out: list[bytes | DecodeError]) -> None:
        if self._shadow == 0:
            out.append(DecodeError(kind, candidate[:SAMPLE_BYTES]))
        self._drop(1)
        self._shadow = max(self._shadow, len(candidate) - 1)

    @property
    def buffered(self) -> int:
        return len(self._buffer)


class _Counting:
    frames: int
    errors: dict[str, int]

    def _count(self, item: DecodeError) -> DecodeError:
        self.errors[item.kind.value] += 1
        return item


class JbdDecoder(_Counting):
    """Turns the BMS's byte stream, split anywhere, into messages and errors. Never raises.

    ``frames`` counts sound frames (error responses included), ``errors`` the rest by
    kind, ``discarded_bytes`` the noise skipped between frames. A response cannot be
    told from a partial one by its bytes alone: call :meth:`line_idle` when the line has
    been quiet longer than a frame takes, and a partial frame left by noise is given up.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.errors = {kind.value: 0 for kind in JbdErrorKind}
        self._framer = _Framer(lambda _register, status: status in (STATUS_OK, STATUS_ERROR))

    @property
    def discarded_bytes(self) -> int:
        return self._framer.discarded_bytes

    @property
    def buffered(self) -> int:
        return self._framer.buffered

    def feed(self, data: bytes) -> list[JbdMessage | DecodeError]:
        """Consume ``data``; return the messages and errors it completes, in order."""
        return self._decode(self._framer.scan(data))

    def line_idle(self) -> list[JbdMessage | DecodeError]:
        """The line went quiet: give up a partial frame (``truncated``), decode the rest."""
        return self._decode(self._framer.scan(b"", idle=True))

    def _decode(self, found: list[bytes | DecodeError]) -> list[JbdMessage | DecodeError]:
        out: list[JbdMessage | DecodeError] = []
        for item in found:
            if isinstance(item, DecodeError):
                out.append(self._count(item))
                continue
            message = _message(item[1], item[2], item[4:-3])
            if isinstance(message, JbdErrorKind):
                out.append(self._count(DecodeError(message, item[:SAMPLE_BYTES])))
            else:
                self.frames += 1
                out.append(message)
        return out


class JbdRequestDecoder(_Counting):
    """The BMS side: the host's requests out of a byte stream. Never raises."""

    def __init__(self) -> None:
        self.frames = 0
        self.errors = {kind.value: 0 for kind in JbdErrorKind}
        self._framer = _Framer(lambda action, _register: action in (READ, WRITE))

    def feed(self, data: bytes) -> list[JbdRequest | DecodeError]:
        out: list[JbdRequest | DecodeError] = []
        for item in self._framer.scan(data):
            if isinstance(item, DecodeError):
                out.append(self._count(item))
            else:
                self.frames += 1
                out.append(JbdRequest(item[2], item[4:-3], write=item[1] == WRITE))
        return out
