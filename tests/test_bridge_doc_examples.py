"""Every worked example in docs/firmware-bridge.md is checked byte for byte.

The examples are the fenced ``bridge-example`` blocks. Each is checked against the codec
and, so that the document does not merely agree with itself, against a CRC and a COBS
encoder written here from their definitions.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from firmware_bridge.bridge_codec import (
    MESSAGE_CLASSES,
    Frame,
    FrameDecoder,
    Message,
    MessageType,
    Role,
    Status,
    decode_message,
    encode_message,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "firmware-bridge.md"
BLOCK = re.compile(r"^```bridge-example\n(.*?)^```$", re.MULTILINE | re.DOTALL)
REQUIRED = {"hello-host", "hello-mcu", "heartbeat-mcu", "pulse", "ack-pulse", "input-changed",
            "ack-input-changed", "read-inputs", "inputs", "ack-busy"}


@dataclass(frozen=True)
class Example:
    name: str
    type: MessageType
    seq: int
    fields: dict[str, str]
    frame: bytes
    crc: bytes
    wire: bytes


def parse(block: str) -> Example:
    lines = dict(line.split(": ", 1) for line in block.strip().splitlines())
    type_name, seq, *pairs = shlex.split(lines["message"])
    assert seq.startswith("seq="), block
    return Example(
        name=lines["name"],
        type=MessageType[type_name],
        seq=int(seq.removeprefix("seq="), 0),
        fields=dict(pair.split("=", 1) for pair in pairs),
        frame=bytes.fromhex(lines["frame"]),
        crc=bytes.fromhex(lines["crc"]),
        wire=bytes.fromhex(lines["wire"]),
    )


def build(example: Example) -> Message:
    cls = MESSAGE_CLASSES[example.type]
    names = {f.name for f in fields(cls)}
    assert set(example.fields) <= names, f"{example.name}: unknown fields"
    assert set(example.fields) == names, f"{example.name}: every field must be given"
    kwargs: dict[str, object] = {}
    for key, text in example.fields.items():
        if key == "role":
            kwargs[key] = Role[text]
        elif key == "status":
            kwargs[key] = Status[text]
        elif key == "acked_type":
            kwargs[key] = MessageType[text].value
        elif key == "firmware":
            kwargs[key] = text
        elif key == "levels":
            kwargs[key] = tuple(c == "1" for c in text)
        elif key == "level":
            kwargs[key] = {"0": False, "1": True}[text]
        else:
            kwargs[key] = int(text, 0)
    return cls(**kwargs)  # type: ignore[arg-type]  # fields checked against the dataclass


def reference_crc(data: bytes) -> int:
    """CRC-16/CCITT-FALSE bit by bit, from its definition (the C code in the document)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def reference_cobs(data: bytes) -> bytes:
    """COBS from Cheshire and Baker: each zero-free run of up to 254 bytes after a code."""
    out, run = bytearray(), bytearray()
    for byte in data:
        if byte == 0:
            out += bytes([len(run) + 1]) + run
            run.clear()
        else:
            run.append(byte)
            if len(run) == 254:
                out += b"\xff" + run
                run.clear()
    return bytes(out + bytes([len(run) + 1]) + run)


DOC_TEXT = DOC.read_text(encoding="utf-8")
EXAMPLES = [parse(block) for block in BLOCK.findall(DOC_TEXT)]


def test_the_document_has_every_required_example_and_no_stray_one() -> None:
    names = [e.name for e in EXAMPLES]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED
    assert DOC_TEXT.count("```bridge-example") == len(EXAMPLES)
    assert any(e.fields.get("status") not in {None, "OK", "CAPPED"} for e in EXAMPLES)


def test_reference_implementations_agree_with_known_values() -> None:
    assert reference_crc(b"123456789") == 0x29B1
    assert reference_cobs(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    assert reference_cobs(b"\x00") == b"\x01\x01"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_worked_example_matches_the_codec_byte_for_byte(example: Example) -> None:
    message = build(example)
    raw = example.frame + example.crc
    assert example.frame[:4] == bytes([1, example.type, example.seq, len(example.frame) - 4])
    assert example.frame[4:] == message.to_payload()
    assert int.from_bytes(example.crc, "big") == reference_crc(example.frame)
    assert example.wire == reference_cobs(raw) + b"\x00"
    assert encode_message(message, example.seq) == example.wire
    assert FrameDecoder().feed(example.wire) == [
        Frame(example.type, example.seq, message.to_payload())]
    assert decode_message(Frame(example.type, example.seq, example.frame[4:])) == message
