"""The SDS011 codec: the control protocol's worked examples, commands, the document's
examples, and a decoder that survives any input."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from firmware_bridge import sds011
from firmware_bridge.sds011 import (
    ALL_DEVICES,
    FRAME_BYTES,
    GARBAGE_RUN_BYTES,
    Command,
    DecodeError,
    ErrorKind,
    ReportingMode,
    Sds011Decoder,
    SdsCommand,
    SdsReading,
    SdsReply,
    encode_command,
    parse_command,
)
from tests.test_pms5003 import (
    DocExample,
    assert_decodes_as_documented,
    call_helper,
    doc_examples,
)


def reference_sds_wire_ok(wire: bytes) -> bool:
    """The SDS011 check rules of [SDS-CP] section 3, written out here."""
    if len(wire) == 19:  # a command
        return (wire[:2] == b"\xaa\xb4" and wire[18] == 0xAB
                and sum(wire[2:17]) % 256 == wire[17])
    return (len(wire) == 10 and wire[0] == 0xAA and wire[1] in (0xC0, 0xC5)
            and wire[9] == 0xAB and sum(wire[2:8]) % 256 == wire[8])


def test_the_document_shows_every_command_the_agent_and_the_datasheet_use() -> None:
    helpers = {e.encodes.split("(")[0] for e in doc_examples("sds011") if e.encodes}
    assert helpers >= {"query_mode", "active_mode", "query", "sleep", "work", "work_period",
                       "set_device_id", "firmware_version", "current_reporting_mode",
                       "current_work_state", "current_work_period"}


@pytest.mark.parametrize("example", doc_examples("sds011"), ids=lambda e: e.name)
def test_document_example_is_byte_exact(example: DocExample) -> None:
    assert reference_sds_wire_ok(example.wire)
    if example.encodes is not None:
        assert call_helper(sds011, example.encodes) == example.wire
        assert parse_command(example.wire) is not None
    else:
        assert_decodes_as_documented(sds011, list(Sds011Decoder().feed(example.wire)),
                                     example)


# --- the control protocol ------------------------------------------------------------------


def datasheet_reading(pm2_5_raw: int, pm10_raw: int, id1: int, id2: int) -> bytes:
    """A reading laid out by hand as [SDS-SPEC] / [SDS-CP] 3.2 describe it."""
    data = [pm2_5_raw & 0xFF, pm2_5_raw >> 8, pm10_raw & 0xFF, pm10_raw >> 8, id1, id2]
    return bytes([0xAA, 0xC0, *data, sum(data) % 256, 0xAB])


def test_the_protocols_query_answer_is_123_6_and_261_8() -> None:
    wire = datasheet_reading(0x04D4, 0x0A3A, 0xA1, 0x60)
    assert wire == bytes.fromhex("aa c0 d4 04 3a 0a a1 60 1d ab")  # [SDS-CP] 3.2
    decoder = Sds011Decoder()
    [reading] = decoder.feed(wire)
    assert reading == SdsReading(pm2_5=123.6, pm10=261.8, device_id=0xA160)
    assert isinstance(reading, SdsReading)
    assert reading.values() == {"pm2_5": 123.6, "pm10": 261.8}
    assert (decoder.frames, decoder.replies) == (1, 0)
    assert decoder.errors == {"bad_checksum": 0, "bad_tail": 0, "garbage": 0}


def test_readings_are_little_endian_tenths_and_the_checksum_is_one_byte() -> None:
    [reading] = Sds011Decoder().feed(datasheet_reading(9999, 0xFFFF, 0xFF, 0xFE))
    assert reading == SdsReading(999.9, 6553.5, 0xFFFE)


def test_replies_expose_what_they_answer() -> None:
    decoder = Sds011Decoder()
    version, period, state = decoder.feed(
        SdsReply(Command.FIRMWARE_VERSION, bytes([15, 7, 10]), 0xA160).to_bytes()
        + SdsReply(Command.WORKING_PERIOD, bytes([1, 5, 0]), 0xA160).to_bytes()
        + SdsReply(Command.SLEEP_WORK, bytes([0, 1, 0]), 0xA160).to_bytes())
    assert isinstance(version, SdsReply)
    assert version.firmware_version == (15, 7, 10)
    assert isinstance(period, SdsReply)
    assert (period.command, period.is_set, period.value) == (8, True, 5)
    assert isinstance(state, SdsReply)
    assert (state.command, state.is_set, state.value) == (6, False, 1)
    assert decoder.replies == 3


@pytest.mark.parametrize(
    ("wire", "command", "data"),
    [
        (sds011.query_mode(), Command.REPORTING_MODE, b"\x01\x01"),
        (sds011.active_mode(), Command.REPORTING_MODE, b"\x01\x00"),
        (sds011.current_reporting_mode(), Command.REPORTING_MODE, b""),
        (sds011.query(), Command.QUERY_DATA, b""),
        (sds011.set_device_id(0x1234), Command.SET_DEVICE_ID, bytes(10) + b"\x12\x34"),
        (sds011.sleep(), Command.SLEEP_WORK, b"\x01\x00"),
        (sds011.work(), Command.SLEEP_WORK, b"\x01\x01"),
        (sds011.current_work_state(), Command.SLEEP_WORK, b""),
        (sds011.work_period(30), Command.WORKING_PERIOD, b"\x01\x1e"),
        (sds011.current_work_period(), Command.WORKING_PERIOD, b""),
        (sds011.firmware_version(), Command.FIRMWARE_VERSION, b""),
    ],
)
def test_every_helper_builds_a_valid_command_for_every_sensor(wire: bytes, command: int,
                                                              data: bytes) -> None:
    assert reference_sds_wire_ok(wire)
    assert parse_command(wire) == SdsCommand(command, data.ljust(12, b"\x00"), ALL_DEVICES)


def test_reporting_modes_are_the_protocols_values() -> None:
    assert (ReportingMode.ACTIVE, ReportingMode.QUERY) == (0, 1)


def test_out_of_range_arguments_are_refused() -> None:
    for minutes in (-1, 31):
        with pytest.raises(ValueError, match="working period"):
            sds011.work_period(minutes)
    with pytest.raises(ValueError, match="device id"):
        sds011.set_device_id(0x10000)
    with pytest.raises(ValueError, match="13 data bytes"):
        encode_command(2, bytes(13))
    with pytest.raises(ValueError, match="cannot be encoded"):
        SdsReading(-0.1, 0.0, 1).to_bytes()
    assert parse_command(sds011.query()[:-1] + b"\xaa") is None
    assert parse_command(sds011.query()[:17] + b"\x00\xab") is None


# --- damaged input ------------------------------------------------------------------------

READING = datasheet_reading(0x04D4, 0x0A3A, 0xA1, 0x60)
DECODED = SdsReading(123.6, 261.8, 0xA160)


def garbage(n: int, sample: bytes) -> DecodeError:
    return DecodeError(ErrorKind.GARBAGE, sample, n)


def test_a_bad_checksum_is_one_error_and_the_next_frame_is_kept() -> None:
    bad = READING[:8] + b"\x00" + READING[9:]
    decoder = Sds011Decoder()
    assert decoder.feed(bad + READING) == [DecodeError(ErrorKind.BAD_CHECKSUM, bad),
                                           garbage(10, bad), DECODED]
    assert decoder.errors == {"bad_checksum": 1, "bad_tail": 0, "garbage": 10}


def test_a_missing_tail_is_one_error_and_a_frame_inside_it_is_found() -> None:
    decoder = Sds011Decoder()
    out = decoder.feed(READING[:4] + READING)  # a reading cut short, then a whole one
    assert out == [DecodeError(ErrorKind.BAD_TAIL, READING[:4] + READING[:6]),
                   garbage(4, READING[:4]), DECODED]
    assert decoder.errors["bad_tail"] == 1


def test_a_command_echoed_on_the_line_is_garbage_not_a_frame() -> None:
    decoder = Sds011Decoder()
    assert decoder.feed(sds011.query() + READING) == [garbage(19, sds011.query()), DECODED]


def test_long_garbage_is_reported_in_runs_and_nothing_is_buffered() -> None:
    decoder = Sds011Decoder()
    assert decoder.feed(b"\x01" * 600) == [garbage(GARBAGE_RUN_BYTES, b"\x01" * 32)] * 2
    assert decoder.feed(b"\xaa") == []
    assert decoder._buffer == b"\xaa"  # it may start a frame: kept
    assert decoder.feed(b"\xc0" + READING[2:]) == [  # it did: the rest of the run first
        garbage(600 - 2 * GARBAGE_RUN_BYTES, b"\x01" * 32), DECODED]
    assert decoder.feed(READING) == [DECODED]
    assert decoder.errors["garbage"] == 600


# --- properties ---------------------------------------------------------------------------

u8, u16 = st.integers(0, 0xFF), st.integers(0, 0xFFFF)
readings = st.builds(lambda a, b, i: SdsReading(a / 10, b / 10, i), u16, u16, u16)
replies = st.builds(SdsReply, u8, st.binary(min_size=3, max_size=3), u16)
messages: st.SearchStrategy[SdsReading | SdsReply] = st.one_of(readings, replies)
near_misses = st.lists(st.sampled_from(b"\xaa\xab\xc0\xc5\xb4\x00"), max_size=30).map(bytes)
noisy_bytes = st.one_of(st.binary(max_size=60), near_misses)


def corrupted(message: SdsReading | SdsReply, index: int, flip: int) -> bytes:
    wire = bytearray(message.to_bytes())
    wire[index % len(wire)] ^= flip
    return bytes(wire)


noise_piece = st.one_of(
    noisy_bytes,
    st.tuples(messages, st.integers(1, 9)).map(lambda t: t[0].to_bytes()[:t[1]]),
    st.tuples(messages, st.integers(0, 9), st.integers(1, 255)).map(lambda t: corrupted(*t)),
)
noise = st.lists(noise_piece, max_size=4).map(b"".join)


def accidental_frame(stream: bytes, start: int, stop: int) -> bool:
    """Whether a valid frame, by the reference rules, starts in ``stream[start:stop]``."""
    return any(reference_sds_wire_ok(stream[p:p + 10]) for p in range(start, stop))


def feed_in_pieces(decoder: Sds011Decoder, stream: bytes, cuts: list[int]) -> list[object]:
    out: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[start:end])
    return out


@given(st.lists(st.tuples(noise, messages), min_size=1, max_size=8), noise, st.data())
def test_valid_frames_embedded_in_noise_are_all_recovered_in_order_however_split(
    pieces: list[tuple[bytes, SdsReading | SdsReply]], tail: bytes, data: st.DataObject
) -> None:
    stream, noise_spans = b"", []
    for junk, message in pieces:
        noise_spans.append((len(stream), len(stream) + len(junk)))
        stream += junk + message.to_bytes()
    tail += bytes(FRAME_BYTES)  # the line goes on: a damaged header in the noise is settled
    noise_spans.append((len(stream), len(stream) + len(tail)))
    stream += tail
    # Noise may hold damaged and truncated frames, but not, by accident, a valid one.
    assume(not any(accidental_frame(stream, a, b) for a, b in noise_spans))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = Sds011Decoder()
    out = feed_in_pieces(decoder, stream, cuts)
    assert [m for m in out if not isinstance(m, DecodeError)] == [m for _, m in pieces]
    assert decoder.errors["garbage"] == sum(b - a for a, b in noise_spans)
    assert decoder._buffer == b""


@given(st.lists(noisy_bytes, max_size=12))
def test_random_bytes_never_crash_the_decoder_and_every_byte_is_accounted_for(
    chunks: list[bytes],
) -> None:
    decoder = Sds011Decoder()
    for chunk in chunks:
        for item in decoder.feed(chunk):
            assert isinstance(item, SdsReading | SdsReply | DecodeError)
        assert len(decoder._buffer) < FRAME_BYTES
    assert (decoder.errors["garbage"] + FRAME_BYTES * (decoder.frames + decoder.replies)
            + len(decoder._buffer)) == sum(map(len, chunks))


@given(st.lists(st.one_of(noisy_bytes, messages.map(lambda m: m.to_bytes())), max_size=10)
       .map(b"".join), st.data())
def test_the_output_and_the_counts_do_not_depend_on_how_the_stream_is_split(
    stream: bytes, data: st.DataObject
) -> None:
    whole = Sds011Decoder()
    expected = whole.feed(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    split = Sds011Decoder()
    assert feed_in_pieces(split, stream, cuts) == expected
    assert (split.errors, split.frames, split.replies) == (
        whole.errors, whole.frames, whole.replies)
