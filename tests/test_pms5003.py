"""The PMS5003 codec: datasheet frames, commands, the document's examples, and a decoder
that survives any input.

The worked examples are the fenced ``sensor-example`` blocks of docs/sensors-protocols.md;
the helpers that read them are shared with tests/test_sds011.py.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from firmware_bridge import pms5003
from firmware_bridge.pms5003 import (
    GARBAGE_RUN_BYTES,
    MAX_FRAME_BYTES,
    DecodeError,
    ErrorKind,
    Pms5003Decoder,
    PmsAck,
    PmsFrame,
    encode_command,
    parse_command,
)

# --- the document's examples -------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "sensors-protocols.md"
DOC_TEXT = DOC.read_text(encoding="utf-8")
BLOCK = re.compile(r"^```sensor-example\n(.*?)^```$", re.MULTILINE | re.DOTALL)
HEX_IN_TEXT = re.compile(r"`((?:[0-9A-Fa-f]{2} ){6,}[0-9A-Fa-f]{2})`")


@dataclass(frozen=True)
class DocExample:
    name: str
    sensor: str
    wire: bytes
    encodes: str | None  # a helper call, e.g. "work_period(5)"
    decodes: str | None  # a class and its attributes, e.g. "PmsAck command=0xe1 data=0"


def doc_examples(sensor: str | None = None) -> list[DocExample]:
    examples = []
    for block in BLOCK.findall(DOC_TEXT):
        lines = dict(line.split(": ", 1) for line in block.strip().splitlines())
        examples.append(DocExample(lines["name"], lines["sensor"], bytes.fromhex(lines["hex"]),
                                   lines.get("encodes"), lines.get("decodes")))
    return [e for e in examples if sensor is None or e.sensor == sensor]


def call_helper(module: ModuleType, text: str) -> bytes:
    """Run ``text`` ("name(literal, ...)") against ``module``; nothing else is evaluated."""
    node = ast.parse(text, mode="eval").body
    assert isinstance(node, ast.Call), text
    assert isinstance(node.func, ast.Name), text
    args = [ast.literal_eval(arg) for arg in node.args]
    kwargs = {str(kw.arg): ast.literal_eval(kw.value) for kw in node.keywords}
    wire: bytes = getattr(module, node.func.id)(*args, **kwargs)
    return wire


def expected_value(module: ModuleType, text: str) -> tuple[type, dict[str, object]]:
    """The class named by a ``decodes:`` line and the attribute values it lists."""
    class_name, *pairs = shlex.split(text)
    attributes = {key: ast.literal_eval(value)
                  for key, value in (pair.split("=", 1) for pair in pairs)}
    cls: type = getattr(module, class_name)
    return cls, attributes


def assert_decodes_as_documented(module: ModuleType, decoded: list[object],
                                 example: DocExample) -> None:
    assert example.decodes is not None
    cls, attributes = expected_value(module, example.decodes)
    assert len(decoded) == 1, decoded
    [value] = decoded
    assert type(value) is cls
    for key, wanted in attributes.items():
        assert getattr(value, key) == wanted, (example.name, key)
    measurement = cls.__name__ in {"PmsFrame", "SdsReading"}
    if measurement and dataclasses.is_dataclass(value):  # every field documented
        assert set(attributes) == {f.name for f in dataclasses.fields(value)}, example.name
    assert value.to_bytes() == example.wire  # type: ignore[attr-defined]  # all have it


def reference_pms_wire_ok(wire: bytes) -> bool:
    """The PMS5003 check rules, from [PMS-DM] Appendices I and II, written out here."""
    if wire[:2] != b"\x42\x4d":
        return False
    if len(wire) == 7:  # a host command: LRC over the first five bytes
        return sum(wire[:5]) % 65536 == wire[5] * 256 + wire[6]
    return (wire[2] * 256 + wire[3] == len(wire) - 4
            and sum(wire[:-2]) % 65536 == wire[-2] * 256 + wire[-1])


def test_the_document_has_every_required_example_and_no_stray_one() -> None:
    examples = doc_examples()
    names = [e.name for e in examples]
    assert len(names) == len(set(names))
    assert DOC_TEXT.count("```sensor-example") == len(examples)
    assert {e.sensor for e in examples} == {"pms5003", "sds011"}
    assert all((e.encodes is None) != (e.decodes is None) for e in examples)
    helpers = {e.encodes.split("(")[0] for e in examples if e.encodes and e.sensor == "pms5003"}
    assert helpers == {"passive_mode", "active_mode", "read_passive", "sleep", "wake"}


def test_every_hex_sequence_in_the_prose_is_one_of_the_checked_examples() -> None:
    wires = {e.wire for e in doc_examples()}
    quoted = [bytes.fromhex(text) for text in HEX_IN_TEXT.findall(DOC_TEXT)]
    assert quoted  # the sources section quotes a captured ack
    assert all(wire in wires for wire in quoted), [w.hex(" ") for w in quoted]


@pytest.mark.parametrize("example", doc_examples("pms5003"), ids=lambda e: e.name)
def test_document_example_is_byte_exact(example: DocExample) -> None:
    assert reference_pms_wire_ok(example.wire)
    if example.encodes is not None:
        assert call_helper(pms5003, example.encodes) == example.wire
        assert parse_command(example.wire) is not None
    else:
        assert_decodes_as_documented(pms5003, list(Pms5003Decoder().feed(example.wire)),
                                     example)


# --- frames and commands from the datasheet ----------------------------------------------


def datasheet_frame(words: list[int]) -> bytes:
    """A data frame laid out by hand as [PMS-DM] Appendix I describes it."""
    raw = bytes([0x42, 0x4D, 0x00, 2 * 13 + 2])
    for word in words:
        raw += bytes([word >> 8, word & 0xFF])
    total = sum(raw)
    return raw + bytes([total >> 8 & 0xFF, total & 0xFF])


WORDS = [11, 12, 13, 21, 22, 23, 3001, 502, 103, 24, 5, 1, 0x9700]  # all distinct: order shows


def test_a_datasheet_frame_decodes_to_named_fields_in_datasheet_order() -> None:
    decoder = Pms5003Decoder()
    [frame] = decoder.feed(datasheet_frame(WORDS))
    assert frame == PmsFrame(pm1_0_cf1=11, pm2_5_cf1=12, pm10_cf1=13, pm1_0=21, pm2_5=22,
                             pm10=23, count_0_3=3001, count_0_5=502, count_1_0=103,
                             count_2_5=24, count_5_0=5, count_10=1, reserved=0x9700)
    assert isinstance(frame, PmsFrame)
    assert frame.values() == {"pm1_0": 21.0, "pm2_5": 22.0, "pm10": 23.0}
    assert all(isinstance(v, float) for v in frame.values().values())
    assert frame.to_bytes() == datasheet_frame(WORDS)
    assert decoder.frames == 1
    assert decoder.errors == {"bad_checksum": 0, "bad_length": 0, "garbage": 0}


def test_big_values_are_big_endian_and_the_checksum_carries_past_one_byte() -> None:
    words = [0xFFFF, 0x1234, 0x00FF, 500, 1000, 0xFF00, 65535, 0, 1, 2, 3, 4, 0]
    [frame] = Pms5003Decoder().feed(datasheet_frame(words))
    assert isinstance(frame, PmsFrame)
    assert (frame.pm1_0_cf1, frame.pm2_5_cf1, frame.pm10_cf1) == (0xFFFF, 0x1234, 0x00FF)
    assert (frame.pm1_0, frame.pm2_5, frame.pm10) == (500, 1000, 0xFF00)


def test_a_frame_fed_one_byte_at_a_time_comes_out_once_at_its_last_byte() -> None:
    decoder, wire = Pms5003Decoder(), datasheet_frame(WORDS)
    outs = [decoder.feed(wire[k:k + 1]) for k in range(len(wire))]
    assert outs[:-1] == [[]] * (len(wire) - 1)
    assert outs[-1] == [PmsFrame(*WORDS)]


@pytest.mark.parametrize(
    ("command", "data", "wire"),
    [  # [PMS-DM] Appendix II; the same bytes as public drivers send
        (0xE1, 0, "42 4d e1 00 00 01 70"),
        (0xE1, 1, "42 4d e1 00 01 01 71"),
        (0xE2, 0, "42 4d e2 00 00 01 71"),
        (0xE4, 0, "42 4d e4 00 00 01 73"),
        (0xE4, 1, "42 4d e4 00 01 01 74"),
    ],
)
def test_commands_carry_the_sum_of_their_first_five_bytes(command: int, data: int,
                                                          wire: str) -> None:
    assert encode_command(command, data) == bytes.fromhex(wire)
    assert parse_command(bytes.fromhex(wire)) == (command, data)


def test_helpers_are_the_datasheet_commands() -> None:
    assert pms5003.passive_mode() == encode_command(0xE1, 0)
    assert pms5003.active_mode() == encode_command(0xE1, 1)
    assert pms5003.read_passive() == encode_command(0xE2, 0)
    assert pms5003.sleep() == encode_command(0xE4, 0)
    assert pms5003.wake() == encode_command(0xE4, 1)


def test_out_of_range_commands_and_frames_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_command(0x100)
    with pytest.raises(ValueError, match="out of range"):
        encode_command(0xE1, 0x10000)
    with pytest.raises(ValueError, match="outside"):
        PmsFrame(*[*WORDS[:-1], 0x10000]).to_bytes()
    assert parse_command(b"\x42\x4d\xe1\x00\x00\x01\x71") is None  # wrong LRC
    assert parse_command(b"\x42\x4d\xe1\x00\x00\x01") is None


# --- damaged input ------------------------------------------------------------------------

FRAME = datasheet_frame(WORDS)


def garbage(n: int, sample: bytes) -> DecodeError:
    return DecodeError(ErrorKind.GARBAGE, sample, n)


def test_a_bad_check_code_is_one_error_and_the_next_frame_is_kept() -> None:
    bad = FRAME[:-1] + bytes([FRAME[-1] ^ 0x01])
    decoder = Pms5003Decoder()
    out = decoder.feed(bad + FRAME)
    assert out == [DecodeError(ErrorKind.BAD_CHECKSUM, bad), garbage(32, bad),
                   PmsFrame(*WORDS)]
    assert decoder.errors == {"bad_checksum": 1, "bad_length": 0, "garbage": 32}


def test_a_bad_length_is_one_error_and_the_decoder_resynchronises() -> None:
    decoder = Pms5003Decoder()
    out = decoder.feed(b"BM\x00\x10" + FRAME)
    assert out == [DecodeError(ErrorKind.BAD_LENGTH, b"BM\x00\x10"), garbage(4, b"BM\x00\x10"),
                   PmsFrame(*WORDS)]
    assert decoder.errors["bad_length"] == 1


def test_a_frame_starting_inside_a_truncated_one_is_found() -> None:
    decoder = Pms5003Decoder()
    out = decoder.feed(FRAME[:20] + FRAME)
    assert out == [DecodeError(ErrorKind.BAD_CHECKSUM, FRAME[:20] + FRAME[:12]),
                   garbage(20, FRAME[:20]), PmsFrame(*WORDS)]


def test_an_ack_between_two_frames_is_decoded_without_touching_them() -> None:
    ack = PmsAck(0xE1, 0)
    assert Pms5003Decoder().feed(FRAME + ack.to_bytes() + FRAME) == [
        PmsFrame(*WORDS), ack, PmsFrame(*WORDS)]


def test_long_garbage_is_reported_in_runs_and_the_buffer_stays_small() -> None:
    decoder = Pms5003Decoder()
    out = decoder.feed(b"\x00" * 1000)
    assert out == [garbage(GARBAGE_RUN_BYTES, b"\x00" * 32)] * 3
    assert decoder._buffer == b""
    assert decoder.feed(b"B") == []
    assert decoder._buffer == b"B"  # it may start a frame: kept
    out = decoder.feed(b"X" + FRAME)
    assert out == [garbage(1000 - 3 * GARBAGE_RUN_BYTES + 2, b"\x00" * 32), PmsFrame(*WORDS)]
    assert decoder.errors["garbage"] == 1002


# --- properties ---------------------------------------------------------------------------

u8, u16 = st.integers(0, 0xFF), st.integers(0, 0xFFFF)
frames = st.builds(PmsFrame, *[u16] * 13)
acks = st.builds(PmsAck, u8, u8)
messages: st.SearchStrategy[PmsFrame | PmsAck] = st.one_of(frames, acks)
# Bytes that look like the start of a frame, so the decoder's paths are all exercised.
near_misses = st.lists(st.sampled_from(b"BM\x00\x1c\x04\xe1\xe4"), max_size=40).map(bytes)
noisy_bytes = st.one_of(st.binary(max_size=80), near_misses)


def corrupted(message: PmsFrame | PmsAck, index: int, flip: int) -> bytes:
    wire = bytearray(message.to_bytes())
    wire[index % len(wire)] ^= flip
    return bytes(wire)


noise_piece = st.one_of(
    noisy_bytes,
    st.tuples(messages, st.integers(1, 31)).map(lambda t: t[0].to_bytes()[:t[1]]),
    st.tuples(messages, st.integers(0, 31), st.integers(1, 255)).map(lambda t: corrupted(*t)),
)
noise = st.lists(noise_piece, max_size=4).map(b"".join)


def accidental_frame(stream: bytes, start: int, stop: int) -> bool:
    """Whether a valid frame, by the reference rules, starts in ``stream[start:stop]``."""
    for p in range(start, stop):
        if stream[p:p + 2] == b"BM" and p + 4 <= len(stream):
            length = stream[p + 2] * 256 + stream[p + 3]
            if length in (28, 4) and p + 4 + length <= len(stream) and reference_pms_wire_ok(
                    stream[p:p + 4 + length]):
                return True
    return False


def feed_in_pieces(decoder: Pms5003Decoder, stream: bytes, cuts: list[int]) -> list[object]:
    out: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[start:end])
    return out


@given(st.lists(st.tuples(noise, messages), min_size=1, max_size=8), noise, st.data())
def test_valid_frames_embedded_in_noise_are_all_recovered_in_order_however_split(
    pieces: list[tuple[bytes, PmsFrame | PmsAck]], tail: bytes, data: st.DataObject
) -> None:
    stream, noise_spans = b"", []
    for junk, message in pieces:
        noise_spans.append((len(stream), len(stream) + len(junk)))
        stream += junk + message.to_bytes()
    # A damaged header holds the frames after it until a frame's worth of bytes has come;
    # the line going on (idle bytes here) settles it.
    tail += bytes(MAX_FRAME_BYTES)
    noise_spans.append((len(stream), len(stream) + len(tail)))
    stream += tail
    # Noise may hold damaged and truncated frames, but not, by accident, a valid one: that
    # would be a frame the sender sent, and could swallow the start of the next.
    assume(not any(accidental_frame(stream, a, b) for a, b in noise_spans))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = Pms5003Decoder()
    out = feed_in_pieces(decoder, stream, cuts)
    assert [m for m in out if not isinstance(m, DecodeError)] == [m for _, m in pieces]
    assert decoder.errors["garbage"] == sum(b - a for a, b in noise_spans)
    assert decoder._buffer == b""


@given(st.lists(noisy_bytes, max_size=12))
def test_random_bytes_never_crash_the_decoder_and_every_byte_is_accounted_for(
    chunks: list[bytes],
) -> None:
    decoder = Pms5003Decoder()
    for chunk in chunks:
        for item in decoder.feed(chunk):
            assert isinstance(item, PmsFrame | PmsAck | DecodeError)
        assert len(decoder._buffer) < MAX_FRAME_BYTES
    assert (decoder.errors["garbage"] + MAX_FRAME_BYTES * decoder.frames + 8 * decoder.acks
            + len(decoder._buffer)) == sum(map(len, chunks))


@given(st.lists(st.one_of(noisy_bytes, messages.map(lambda m: m.to_bytes())), max_size=10)
       .map(b"".join), st.data())
def test_the_output_and_the_counts_do_not_depend_on_how_the_stream_is_split(
    stream: bytes, data: st.DataObject
) -> None:
    whole = Pms5003Decoder()
    expected = whole.feed(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    split = Pms5003Decoder()
    assert feed_in_pieces(split, stream, cuts) == expected
    assert (split.errors, split.frames, split.acks) == (whole.errors, whole.frames, whole.acks)
