"""Sans-I/O codec for the Victron VE.Direct text protocol (BMV, SmartShunt, MPPT).

The device sends, at 19200 8N1, fields ``CR LF <label> TAB <value>`` grouped in blocks; the
last field of a block is ``CR LF "Checksum" TAB <byte>``, the byte chosen so that every byte
of the block, from its first CR through the checksum byte, sums to 0 modulo 256. Devices
with many fields send several such checksummed blocks in turn (a BMV: the live values, then
the history); each is a :class:`VeBlock` here.

HEX protocol frames (``:`` hex digits ``LF``) may arrive at any point, even inside a block:
as Victron's reference frame handler does, a ``:`` anywhere but in the checksum byte's
place starts a HEX frame, whose bytes up to its LF are set aside, not summed, and the text
resumes where it stood. :class:`VeDirectDecoder` counts them in ``hex_frames`` and never
raises. docs/battery-protocols.md is the specification, with worked examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "BAUDRATE", "MAX_FIELDS", "MAX_HEX_DIGITS", "MAX_LABEL_BYTES", "MAX_VALUE_BYTES",
    "DecodeError", "DecodeErrorKind", "VeBlock", "VeDirectDecoder", "encode_block",
    "hex_frame",
]

BAUDRATE = 19200
CHECKSUM_LABEL = "Checksum"
MAX_LABEL_BYTES = 16  # the longest labels in the whitepaper have 8 characters
MAX_VALUE_BYTES = 64  # the longest values (serial numbers, model names) are under 33
MAX_FIELDS = 32  # in one checksummed block, the Checksum field not counted
MAX_HEX_DIGITS = 128  # a HEX frame's digits between ':' and LF
SAMPLE_BYTES = 32

_CR, _LF, _TAB, _COLON = 0x0D, 0x0A, 0x09, 0x3A
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")


class DecodeErrorKind(StrEnum):
    """Why bytes that began a block did not make one."""

    BAD_CHECKSUM = "bad_checksum"
    BAD_FIELD = "bad_field"  # a byte no label or value may hold, or a label without a value
    TOO_LONG = "too_long"  # a label, value, HEX frame or block over its limit


@dataclass(frozen=True, slots=True)
class DecodeError:
    """A block lost; ``sample`` holds at most its first 32 bytes, for logs."""

    kind: DecodeErrorKind
    sample: bytes


@dataclass(frozen=True, slots=True)
class VeBlock:
    """One checksummed block: its fields as sent, and typed views of the common ones.

    Each accessor is None when its label is absent or its value is not a number (or
    ON/OFF) as the whitepaper specifies; units are converted to SI.
    """

    fields: dict[str, str]

    def _int(self, label: str) -> int | None:
        text = self.fields.get(label)
        if text is None:
            return None
        try:
            return int(text, 10)
        except ValueError:
            return None

    def _scaled(self, label: str, per_unit: int) -> float | None:
        raw = self._int(label)
        return None if raw is None else raw / per_unit

    def _on_off(self, label: str) -> bool | None:
        return {"ON": True, "OFF": False}.get(self.fields.get(label, ""))

    @property
    def voltage_v(self) -> float | None:
        """Main (battery) voltage, ``V`` in mV."""
        return self._scaled("V", 1000)

    @property
    def current_a(self) -> float | None:
        """Battery current, ``I`` in mA; positive while charging."""
        return self._scaled("I", 1000)

    @property
    def soc_pct(self) -> float | None:
        """State of charge in percent, ``SOC`` in per mille."""
        return self._scaled("SOC", 10)

    @property
    def temperature_c(self) -> float | None:
        """Battery temperature, ``T`` in °C (only with a temperature sensor)."""
        return self._scaled("T", 1)

    @property
    def consumed_ah(self) -> float | None:
        """Consumed amp-hours, ``CE`` in mAh (negative once charge has been drawn)."""
        return self._scaled("CE", 1000)

    @property
    def alarm(self) -> bool | None:
        """The alarm condition (``Alarm`` ON/OFF), not the buzzer."""
        return self._on_off("Alarm")

    @property
    def alarm_reason(self) -> int | None:
        """``AR``, a bit field: 1 low voltage, 2 high voltage, 4 low SOC, 32 low and 64
        high temperature... (table in docs/battery-protocols.md)."""
        return self._int("AR")

    @property
    def relay(self) -> bool | None:
        """The relay state (``Relay`` ON/OFF)."""
        return self._on_off("Relay")

    @property
    def product_id(self) -> int | None:
        """``PID``, sent in hex (``0x203`` is a BMV-700)."""
        text = self.fields.get("PID")
        if text is None or not text.lower().startswith("0x"):
            return None
        try:
            return int(text[2:], 16)
        except ValueError:
            return None


# --- encoding (the device side: simulators, tests, documentation) ----------------------


def _check_text(kind: str, text: str, limit: int, lowest: int) -> bytes:
    raw = text.encode("ascii", "replace")
    if (not text.isascii() or len(raw) > limit
            or any(b < lowest or b > 0x7E or b == _COLON for b in raw)):
        raise ValueError(f"{kind} {text!r}: at most {limit} printable ASCII characters, no ':'")
    return raw


def _encode_part(items: list[tuple[str, str]]) -> bytes:
    body = bytearray()
    for label, value in items:
        body += b"\r\n" + _check_text("label", label, MAX_LABEL_BYTES, 0x21)
        body += b"\t" + _check_text("value", value, MAX_VALUE_BYTES, 0x20)
    body += b"\r\n" + CHECKSUM_LABEL.encode("ascii") + b"\t"
    return bytes(body) + bytes([-sum(body) % 256])


def encode_block(fields: Mapping[str, str], *, part_size: int | None = None) -> bytes:
    """The bytes a device sends for ``fields``, in their order, with the checksum.

    ``part_size`` splits them into consecutive blocks of at most that many fields, each
    with its own checksum, as devices with many fields do. Raises ValueError for a label
    or value the protocol cannot carry (empty label, ``Checksum``, ``:``, control or
    non-ASCII characters, over-long) or more than :data:`MAX_FIELDS` fields in one block.
    """
    items = list(fields.items())
    size = part_size if part_size is not None else max(len(items), 1)
    if not 1 <= size <= MAX_FIELDS:
        raise ValueError(f"a block holds 1 to {MAX_FIELDS} fields, not {size}")
    for label, _ in items:
        if not label or label == CHECKSUM_LABEL:
            raise ValueError(f"label {label!r} is not a field label")
    parts = [items[i : i + size] for i in range(0, len(items), size)] or [[]]
    return b"".join(_encode_part(part) for part in parts)


def hex_frame(command: int, data: bytes = b"") -> bytes:
    """A HEX protocol frame: ``:``, the command nibble, the data bytes and a check byte
    (all bytes and the check sum to 0x55), in upper-case hex digits, then LF.

    ``hex_frame(7, bytes([0xF0, 0xED, 0x00]))`` is ``b":7F0ED0071\\n"`` (Victron's
    example). Raises ValueError for a command outside 0..15.
    """
    if not 0 <= command <= 0xF:
        raise ValueError(f"command {command} is not a nibble")
    check = (0x55 - command - sum(data)) % 256
    return f":{command:X}{data.hex().upper()}{check:02X}\n".encode("ascii")


# --- decoding --------------------------------------------------------------------------

_HUNT, _LF_NEXT, _LABEL, _VALUE, _CHECKSUM = range(5)


class VeDirectDecoder:
    """Turns a VE.Direct byte stream, split anywhere, into blocks and errors. Never raises.

    Outside a block, bytes are skipped until a CR. A block is lost when a byte breaks its
    grammar (``bad_field``), a label, value, HEX frame or the block outgrows its limit
    (``too_long``) or its sum is not 0 (``bad_checksum``); the decoder then looks for the
    next CR, and the remainder of a block already reported lost is not reported again.
    ``errors`` counts lost blocks by kind; ``frames`` counts blocks decoded, ``hex_frames``
    HEX frames set aside (their own check byte is not verified: they are not read here).
    Memory is bounded by the limits above, whatever the input.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.hex_frames = 0
        self.errors: dict[str, int] = {kind.value: 0 for kind in DecodeErrorKind}
        self._state = _HUNT
        self._sum = 0
        self._sample = bytearray()
        self._label = bytearray()
        self._value = bytearray()
        self._fields: dict[str, str] = {}
        self._hex: bytearray | None = None  # inside a HEX frame: its digits so far
        self._reported = False  # the block being skipped was reported lost already

    @property
    def buffered(self) -> int:
        """Bytes held for the block in progress (bounded by the module's limits)."""
        held = len(self._label) + len(self._value) + len(self._sample)
        held += sum(len(k) + len(v) for k, v in self._fields.items())
        return held + (len(self._hex) if self._hex is not None else 0)

    def feed(self, data: bytes) -> list[VeBlock | DecodeError]:
        """Consume ``data``; return the blocks and errors it completes, in order."""
        out: list[VeBlock | DecodeError] = []
        for byte in data:
            if self._hex is not None and self._hex_byte(byte, out):
                continue
            if byte == _COLON and self._state != _CHECKSUM:
                self._hex = bytearray()  # set aside up to its LF; the text state waits
                continue
            self._text_byte(byte, out)
        return out

    def _hex_byte(self, byte: int, out: list[VeBlock | DecodeError]) -> bool:
        """Handle ``byte`` inside a HEX frame; False if it is text after all."""
        assert self._hex is not None
        if byte == _LF:
            self._hex = None
            self.hex_frames += 1
            return True
        if byte in _HEX_DIGITS and len(self._hex) < MAX_HEX_DIGITS:
            self._hex.append(byte)
            return True
        too_long = byte in _HEX_DIGITS
        sample = b":" + bytes(self._hex[: SAMPLE_BYTES - 1])
        self._hex = None  # not a HEX frame: the ':' was noise, and so is the block
        if too_long:
            self._lose(DecodeErrorKind.TOO_LONG, out, sample=sample)
        else:
            self._lose(DecodeErrorKind.BAD_FIELD, out)
        return too_long

    def _text_byte(self, byte: int, out: list[VeBlock | DecodeError]) -> None:
        state = self._state
        if state == _HUNT:
            if byte == _CR:
                self._begin()
        elif state == _LF_NEXT:
            if byte == _LF:
                self._add(byte)
                self._label.clear()
                self._state = _LABEL
            else:
                self._lose(DecodeErrorKind.BAD_FIELD, out)
                self._text_byte(byte, out)
        elif state == _LABEL:
            self._label_byte(byte, out)
        elif state == _VALUE:
            self._value_byte(byte, out)
        else:  # the checksum byte, whatever it is
            self._add(byte)
            self._end(out)

    def _label_byte(self, byte: int, out: list[VeBlock | DecodeError]) -> None:
        if byte == _TAB and self._label:
            self._add(byte)
            if self._label == b"Checksum":
                self._state = _CHECKSUM
            else:
                self._value.clear()
                self._state = _VALUE
        elif 0x21 <= byte <= 0x7E:
            if len(self._label) == MAX_LABEL_BYTES:
                self._lose(DecodeErrorKind.TOO_LONG, out)
                return
            self._label.append(byte)
            self._add(byte)
        else:
            self._lose(DecodeErrorKind.BAD_FIELD, out)
            self._text_byte(byte, out)  # a CR may begin the next block

    def _value_byte(self, byte: int, out: list[VeBlock | DecodeError]) -> None:
        if byte == _CR:
            if len(self._fields) == MAX_FIELDS:
                self._lose(DecodeErrorKind.TOO_LONG, out)
                self._text_byte(byte, out)
                return
            self._fields[self._label.decode("ascii")] = self._value.decode("ascii")
            self._add(byte)
            self._state = _LF_NEXT
        elif 0x20 <= byte <= 0x7E:
            if len(self._value) == MAX_VALUE_BYTES:
                self._lose(DecodeErrorKind.TOO_LONG, out)
                return
            self._value.append(byte)
            self._add(byte)
        else:
            self._lose(DecodeErrorKind.BAD_FIELD, out)
            self._text_byte(byte, out)

    def _begin(self) -> None:
        self._state = _LF_NEXT
        self._sum = 0
        self._sample.clear()
        self._fields = {}
        self._add(_CR)

    def _add(self, byte: int) -> None:
        self._sum += byte
        if len(self._sample) < SAMPLE_BYTES:
            self._sample.append(byte)

    def _end(self, out: list[VeBlock | DecodeError]) -> None:
        self._state = _HUNT
        if self._sum % 256 == 0:
            self.frames += 1
            out.append(VeBlock(self._fields))
        elif not self._reported:
            out.append(self._error(DecodeErrorKind.BAD_CHECKSUM))
        self._fields = {}
        self._reported = False

    def _lose(self, kind: DecodeErrorKind, out: list[VeBlock | DecodeError], *,
              sample: bytes | None = None) -> None:
        """Abandon the block in progress; report it unless nothing had begun (a lone CR,
        noise between blocks) or it was reported already. An over-long HEX frame
        (``sample`` given) is reported even between blocks."""
        begun = self._state not in (_HUNT, _LF_NEXT) or bool(self._fields)
        if (begun or sample is not None) and not self._reported:
            out.append(self._error(kind, sample))
            self._reported = True
        self._state = _HUNT
        self._fields = {}

    def _error(self, kind: DecodeErrorKind, sample: bytes | None = None) -> DecodeError:
        self.errors[kind.value] += 1
        return DecodeError(kind, bytes(self._sample) if sample is None else sample)
