"""The VE.Direct text codec: blocks, HEX frames inside them, and a decoder that survives any
input. The worked examples of docs/battery-protocols.md are checked at the end."""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.vedirect import (
    MAX_FIELDS,
    MAX_HEX_DIGITS,
    MAX_LABEL_BYTES,
    MAX_VALUE_BYTES,
    DecodeError,
    DecodeErrorKind,
    VeBlock,
    VeDirectDecoder,
    encode_block,
    hex_frame,
)

BMV = {"PID": "0x203", "V": "26201", "I": "-1500", "P": "-39", "CE": "-2500", "SOC": "876",
       "TTG": "1017", "Alarm": "OFF", "Relay": "OFF", "AR": "0", "BMV": "700", "FW": "0307"}
ASYNC = hex_frame(0xA, bytes([0x8D, 0xED, 0x00, 0x59, 0x0A]))  # async: main voltage 26.81 V


def decode_all(*chunks: bytes) -> tuple[list[VeBlock | DecodeError], VeDirectDecoder]:
    decoder = VeDirectDecoder()
    out: list[VeBlock | DecodeError] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out, decoder


def reference_sum_ok(part: bytes) -> bool:
    """The whitepaper's rule, written out: all bytes of the block sum to 0 modulo 256."""
    return sum(part) % 256 == 0


def with_checksum(label: str, byte: bytes) -> dict[str, str]:
    """A one-field block whose checksum byte is ``byte``."""
    printable = [chr(c) for c in range(0x20, 0x7F) if c != 0x3A]
    for first in printable:  # three characters sum to 96..378: every residue modulo 256
        for second in printable:
            value = "~" + first + second
            if encode_block({label: value}).endswith(byte):
                return {label: value}
    raise AssertionError(f"no value of {label} gives checksum {byte!r}")


def checksum_places(wire: bytes) -> set[int]:
    """Where each part's checksum byte is (a ':' there would be that byte, not a frame)."""
    return {m.end() - 1 for m in re.finditer(rb"(?s)Checksum\t.", wire)}


# --- encoding ------------------------------------------------------------------------------


def test_a_block_is_fields_then_a_checksum_making_the_sum_zero() -> None:
    wire = encode_block({"V": "12800", "I": "-500"})
    assert wire.startswith(b"\r\nV\t12800\r\nI\t-500\r\nChecksum\t")
    assert len(wire) == len(b"\r\nV\t12800\r\nI\t-500\r\nChecksum\t") + 1
    assert reference_sum_ok(wire)


def test_part_size_splits_a_block_into_checksummed_parts_in_order() -> None:
    wire = encode_block(BMV, part_size=5)
    parts = re.findall(rb"(?s).*?Checksum\t.", wire)
    assert len(parts) == 3
    assert b"".join(parts) == wire
    assert all(reference_sum_ok(part) for part in parts)
    out, decoder = decode_all(wire)
    assert [list(b.fields) for b in out if isinstance(b, VeBlock)] == [
        ["PID", "V", "I", "P", "CE"], ["SOC", "TTG", "Alarm", "Relay", "AR"], ["BMV", "FW"]]
    assert decoder.frames == 3


@pytest.mark.parametrize(
    ("fields", "part_size"),
    [({"": "1"}, None), ({"Checksum": "1"}, None), ({"V": "1:2"}, None), ({"V:": "1"}, None),
     ({"V": "é"}, None), ({"V\t": "1"}, None), ({"V": "1\r\n"}, None), ({"A B": "1"}, None),
     ({"L" * (MAX_LABEL_BYTES + 1): "1"}, None), ({"V": "1" * (MAX_VALUE_BYTES + 1)}, None),
     ({f"H{i}": "0" for i in range(MAX_FIELDS + 1)}, None), (BMV, 0)],
)
def test_fields_the_protocol_cannot_carry_are_refused(
    fields: dict[str, str], part_size: int | None
) -> None:
    with pytest.raises(ValueError, match=r"label|value|fields|block"):
        encode_block(fields, part_size=part_size)


def test_hex_frames_match_victrons_published_examples() -> None:
    assert hex_frame(7, bytes([0x00, 0x10, 0x00])) == b":70010003E\n"  # get battery capacity
    assert hex_frame(7, bytes([0xFF, 0x0F, 0x00])) == b":7FF0F0040\n"  # get SOC
    assert hex_frame(7, bytes([0xF0, 0xED, 0x00])) == b":7F0ED0071\n"
    assert hex_frame(0xA, bytes([0x00, 0x02, 0x00, 0x01])) == b":A0002000148\n"
    with pytest.raises(ValueError, match="nibble"):
        hex_frame(16)


# --- typed accessors -----------------------------------------------------------------------


def test_accessors_convert_the_common_labels_to_si_units() -> None:
    block = VeBlock({**BMV, "T": "-5", "Alarm": "ON", "Relay": "ON", "AR": "65"})
    assert block.voltage_v == 26.201
    assert block.current_a == -1.5
    assert block.soc_pct == 87.6
    assert block.temperature_c == -5.0
    assert block.consumed_ah == -2.5
    assert block.alarm is True
    assert block.relay is True
    assert block.alarm_reason == 65
    assert block.product_id == 0x203


def test_accessors_are_none_when_absent_or_not_as_specified() -> None:
    empty = VeBlock({})
    assert [empty.voltage_v, empty.current_a, empty.soc_pct, empty.temperature_c,
            empty.consumed_ah, empty.alarm, empty.alarm_reason, empty.relay,
            empty.product_id] == [None] * 9
    odd = VeBlock({"V": "---", "T": "", "Alarm": "maybe", "PID": "203", "AR": "0x1"})
    assert odd.voltage_v is None
    assert odd.temperature_c is None
    assert odd.alarm is None
    assert odd.product_id is None
    assert odd.alarm_reason is None
    assert VeBlock({"PID": "0xZZ"}).product_id is None


# --- decoding: the grammar and its errors --------------------------------------------------


def test_a_block_decodes_byte_by_byte_as_in_one_piece() -> None:
    wire = encode_block(BMV) * 2
    out, _ = decode_all(*(bytes([b]) for b in wire))
    assert out == [VeBlock(BMV), VeBlock(BMV)]


def test_a_hex_frame_anywhere_inside_a_block_is_set_aside_without_breaking_its_checksum() -> None:
    wire = encode_block(BMV)
    for at in range(len(wire) - 1):  # every place but the checksum byte's own
        out, decoder = decode_all(wire[:at] + ASYNC + wire[at:] + ASYNC)
        assert out == [VeBlock(BMV)], at
        assert decoder.hex_frames == 2
        assert sum(decoder.errors.values()) == 0


def test_a_colon_in_the_checksum_place_is_the_checksum_byte() -> None:
    fields = with_checksum("V", b":")
    wire = encode_block(fields)
    out, decoder = decode_all(wire + ASYNC + encode_block(BMV))
    assert out == [VeBlock(fields), VeBlock(BMV)]
    assert decoder.hex_frames == 1


@pytest.mark.parametrize("byte", [b"\r", b"\n", b"\t", b"\x00"])
def test_any_checksum_byte_value_ends_the_block(byte: bytes) -> None:
    fields = with_checksum("I", byte)
    out, _ = decode_all(encode_block(fields) + encode_block(BMV))
    assert out == [VeBlock(fields), VeBlock(BMV)]


def test_a_bad_checksum_is_one_error_and_the_next_block_decodes() -> None:
    wire = bytearray(encode_block(BMV))
    wire[-1] ^= 0x01
    out, decoder = decode_all(bytes(wire) + encode_block(BMV))
    assert [type(x) for x in out] == [DecodeError, VeBlock]
    assert isinstance(out[0], DecodeError)
    assert out[0].kind is DecodeErrorKind.BAD_CHECKSUM
    assert out[0].sample == bytes(wire[:32])
    assert decoder.errors == {"bad_checksum": 1, "bad_field": 0, "too_long": 0}


@pytest.mark.parametrize(
    ("damage", "kind"),
    [(lambda w: w.replace(b"26201", b"26\x0001"), "bad_field"),
     (lambda w: w.replace(b"\tOFF", b"\xffOFF", 1), "bad_field"),
     (lambda w: w.replace(b"\r\nP\t", b"\r\n\tP"), "bad_field"),
     (lambda w: w.replace(b"\r\nI", b"\rXI"), "bad_field"),
     (lambda w: w.replace(b"-1500", b"-1500\n"), "bad_field"),
     (lambda w: w.replace(b"26201", b"2:6201"), "bad_field"),
     (lambda w: w.replace(b"26201", b"9" * (MAX_VALUE_BYTES + 1)), "too_long"),
     (lambda w: w.replace(b"\r\nV\t", b"\r\n" + b"V" * (MAX_LABEL_BYTES + 1) + b"\t"),
      "too_long"),
     (lambda w: w.replace(b"26201", b"26201" + b":" + b"A" * (MAX_HEX_DIGITS + 1)), "too_long")],
    ids=["nul-in-value", "high-byte", "empty-label", "cr-without-lf", "lf-in-value",
         "colon-then-text", "long-value", "long-label", "long-hex"],
)
def test_a_damaged_block_is_reported_once_by_kind_and_the_next_block_decodes(
    damage: Callable[[bytes], bytes], kind: str
) -> None:
    wire = damage(encode_block(BMV))
    out, decoder = decode_all(wire + encode_block(BMV))
    assert len(out) == 2, out
    assert isinstance(out[0], DecodeError)
    assert out[0].kind == kind
    assert out[1] == VeBlock(BMV)
    assert decoder.errors[kind] == 1
    assert sum(decoder.errors.values()) == 1  # the tail of the damaged block is not counted


def test_a_block_of_too_many_fields_is_too_long() -> None:
    fields = {f"H{i}": "0" for i in range(MAX_FIELDS)}
    assert decode_all(encode_block(fields))[0] == [VeBlock(fields)]
    body = b"".join(b"\r\nH%d\t0" % i for i in range(MAX_FIELDS + 1)) + b"\r\nChecksum\t"
    out, decoder = decode_all(body + bytes([-sum(body) % 256]) + encode_block(BMV))
    assert decoder.errors["too_long"] == 1
    assert out[-1] == VeBlock(BMV)


def test_noise_between_blocks_is_skipped_silently_but_a_started_field_is_an_error() -> None:
    out, decoder = decode_all(b"xyz\r\r\x00 garbage", encode_block(BMV))
    assert out == [VeBlock(BMV)]
    assert sum(decoder.errors.values()) == 0
    out, decoder = decode_all(b"\r\nAB\xfe", encode_block(BMV))
    assert [type(x) for x in out] == [DecodeError, VeBlock]
    assert decoder.errors["bad_field"] == 1


def test_an_over_long_run_of_hex_digits_between_blocks_is_one_error() -> None:
    out, decoder = decode_all(b":" + b"F" * 10_000, encode_block(BMV))
    assert [type(x) for x in out] == [DecodeError, VeBlock]
    assert decoder.errors == {"bad_checksum": 0, "bad_field": 0, "too_long": 1}
    assert decoder.hex_frames == 0


# --- decoding: properties ------------------------------------------------------------------

labels = st.from_regex(r"[A-Za-z0-9_#]{1,8}", fullmatch=True).filter(lambda s: s != "Checksum")
values = st.from_regex(r"[ -9;-~]{0,24}", fullmatch=True)  # printable ASCII except ':'
field_sets = st.dictionaries(labels, values, max_size=MAX_FIELDS)
hex_frames = st.builds(hex_frame, st.integers(0, 15), st.binary(max_size=8))
# Noise made of the protocol's own pieces finds more states than uniform bytes do.
PIECES = [b"\r", b"\n", b"\t", b":", b"\r\n", b"Checksum\t", b"Checksum", b"V\t12", b"A",
          b"7", b"\x00", b"\xff", b" ", b"\r\nV\t1\r\nChecksum\t"]
noise = st.one_of(st.binary(max_size=300), st.lists(
    st.one_of(st.sampled_from(PIECES), st.binary(max_size=4)), max_size=60).map(b"".join))


@st.composite
def blocks(draw: st.DrawFn) -> tuple[bytes, list[VeBlock]]:
    """A block's bytes, perhaps in several parts, and the VeBlocks they decode to."""
    fields = draw(field_sets)
    part_size = draw(st.integers(1, MAX_FIELDS))
    items = list(fields.items())
    parts = [dict(items[i : i + part_size]) for i in range(0, len(items), part_size)] or [{}]
    return encode_block(fields, part_size=part_size), [VeBlock(p) for p in parts]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted(cuts)
    return [data[a:b] for a, b in zip([0, *edges], [*edges, len(data)], strict=True)]


@given(st.lists(blocks(), max_size=6), st.data())
def test_blocks_decode_identically_however_the_bytes_are_split(
    sent: list[tuple[bytes, list[VeBlock]]], data: st.DataObject
) -> None:
    stream = b"".join(wire for wire, _ in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    out, decoder = decode_all(*split(stream, cuts))
    assert out == [block for _, parts in sent for block in parts]
    assert decoder.frames == len(out)
    assert sum(decoder.errors.values()) == 0


@given(blocks(), st.lists(st.tuples(st.integers(0, 10_000), hex_frames), max_size=8), st.data())
def test_hex_frames_inserted_anywhere_are_counted_and_cause_no_error(
    block: tuple[bytes, list[VeBlock]], inserts: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    wire, parts = block
    places = [p for p in range(len(wire) + 1) if p not in checksum_places(wire)]
    stream = wire
    for seed, frame in sorted(((places[s % len(places)], f) for s, f in inserts), reverse=True):
        stream = stream[:seed] + frame + stream[seed:]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    out, decoder = decode_all(*split(stream, cuts))
    assert out == parts
    assert decoder.hex_frames == len(inserts)
    assert sum(decoder.errors.values()) == 0


@given(st.lists(noise, max_size=12))
def test_random_bytes_never_crash_the_decoder_and_its_memory_stays_bounded(
    chunks: list[bytes],
) -> None:
    decoder = VeDirectDecoder()
    bound = MAX_FIELDS * (MAX_LABEL_BYTES + MAX_VALUE_BYTES) + MAX_HEX_DIGITS + 200
    for chunk in chunks:
        for item in decoder.feed(chunk):
            assert isinstance(item, VeBlock | DecodeError)
        assert decoder.buffered <= bound


@given(st.lists(st.tuples(noise, blocks()), min_size=1, max_size=6), st.data())
def test_blocks_after_noise_ended_by_a_framing_error_byte_are_all_recovered_in_order(
    pieces: list[tuple[bytes, tuple[bytes, list[VeBlock]]]], data: st.DataObject
) -> None:
    # A UART framing error or a break reads as 0x00: no field may hold it, so whatever
    # state the noise left the decoder in, the next block starts clean.
    stream = b"".join(noise + b"\x00" + wire for noise, (wire, _) in pieces)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    out, _ = decode_all(*split(stream, cuts))
    recovered = iter([b for b in out if isinstance(b, VeBlock)])
    wanted = [block for _, (_, parts) in pieces for block in parts]
    assert all(any(got == want for got in recovered) for want in wanted), (out, wanted)


@given(noise, blocks(), blocks())
def test_after_any_noise_the_second_block_is_always_recovered(
    noise: bytes, first: tuple[bytes, list[VeBlock]], second: tuple[bytes, list[VeBlock]]
) -> None:
    # Noise may swallow the block right after it (its bytes continue a field the noise
    # began); that block's checksum field ends whatever was in progress, so the next is safe.
    out, _ = decode_all(noise + first[0] + second[0])
    assert out[-len(second[1]):] == second[1]


# --- the worked examples of docs/battery-protocols.md ---------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "battery-protocols.md"
FENCE = re.compile(r"^```vedirect-example\n(.*?)^```$", re.MULTILINE | re.DOTALL)
JOIN = {"text": ""}  # how continuation lines join: text verbatim, the rest with spaces


@dataclass(frozen=True)
class Example:
    name: str
    keys: dict[str, str]


def parse(block: str) -> Example:
    keys: dict[str, str] = {}
    last = ""
    for line in block.splitlines():
        if line.startswith("  "):
            keys[last] += JOIN.get(last, " ") + line.strip()
        else:
            last, _, value = line.partition(": ")
            keys[last] = value
    return Example(keys.pop("name"), keys)


def doc_examples() -> list[Example]:
    return [parse(block) for block in FENCE.findall(DOC.read_text(encoding="utf-8"))]


EXAMPLES = doc_examples()
STRUCTURAL = {"fields", "part_size", "text", "wire", "checksums", "hex", "hex_at",
              "hex_frames"}


def test_the_document_has_vedirect_examples_with_parts_and_a_hex_frame_inside() -> None:
    names = [e.name for e in EXAMPLES]
    assert len(names) == len(set(names)) >= 3
    assert any("part_size" in e.keys for e in EXAMPLES)
    assert any("hex" in e.keys for e in EXAMPLES)
    assert len(HEX_EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_vedirect_worked_example_matches_the_codec_byte_for_byte(example: Example) -> None:
    keys = example.keys
    fields = dict(pair.split("=", 1) for pair in shlex.split(keys["fields"]))
    part_size = int(keys["part_size"]) if "part_size" in keys else None
    text = encode_block(fields, part_size=part_size)
    assert ast.literal_eval("b'" + keys["text"] + "'") == text
    parts = re.findall(rb"(?s).*?Checksum\t.", text)
    assert all(reference_sum_ok(part) for part in parts)
    assert bytes.fromhex(keys["checksums"]) == bytes(part[-1] for part in parts)
    wire = text
    if "hex" in keys:
        at = int(keys["hex_at"])
        assert at not in checksum_places(text)
        wire = text[:at] + keys["hex"].encode("ascii") + b"\n" + text[at:]
    assert bytes.fromhex(keys["wire"]) == wire
    out, decoder = decode_all(wire)
    assert all(isinstance(b, VeBlock) for b in out)
    assert {k: v for b in out if isinstance(b, VeBlock) for k, v in b.fields.items()} == fields
    assert decoder.hex_frames == int(keys.get("hex_frames", "0"))
    merged = VeBlock({k: v for b in out if isinstance(b, VeBlock) for k, v in b.fields.items()})
    for name, expected in keys.items():
        if name not in STRUCTURAL:
            assert getattr(merged, name) == ast.literal_eval(expected), name


HEX_FENCE = re.compile(r"^```vedirect-hex-example\n(.*?)^```$", re.MULTILINE | re.DOTALL)
HEX_EXAMPLES = [parse(b) for b in HEX_FENCE.findall(DOC.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("example", HEX_EXAMPLES, ids=lambda e: e.name)
def test_hex_frame_worked_example_matches_the_encoder_and_the_0x55_rule(example: Example) -> None:
    command = int(example.keys["command"], 16)
    data = bytes.fromhex(example.keys["data"])
    frame = example.keys["frame"]
    digits = bytes.fromhex("0" + frame[1:])  # the command nibble padded to a byte
    assert sum(digits) % 256 == 0x55
    assert hex_frame(command, data) == frame.encode("ascii") + b"\n"
    out, decoder = decode_all(frame.encode("ascii") + b"\n")
    assert out == []
    assert decoder.hex_frames == 1
