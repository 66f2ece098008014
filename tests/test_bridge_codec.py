"""The firmware-bridge codec: frames, messages, and a decoder that survives any input."""

from __future__ import annotations

import contextlib

import pytest
from cobs import cobs  # type: ignore[import-untyped]  # cobs ships no type information
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.bridge_codec import (
    MAX_ENCODED,
    MAX_FIRMWARE,
    MAX_IO,
    MAX_PAYLOAD,
    MAX_WIRE,
    MESSAGE_CLASSES,
    Ack,
    Frame,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
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
    crc16,
    decode_message,
    encode_frame,
    encode_message,
    frame_bytes,
)

u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
firmware = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=MAX_FIRMWARE)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, st.sampled_from(Role), u32, st.integers(0, MAX_IO), st.integers(0, MAX_IO),
              u16, firmware, u8),
    st.builds(Heartbeat, u32, u32),
    st.builds(Ack, u8, st.sampled_from(Status), u16, u16),
    st.builds(Pulse, u16, u8, st.integers(1, 0xFFFF)),
    st.builds(SetOutput, u16, u8, st.booleans()),
    st.just(ReadInputs()),
    st.builds(Inputs, st.lists(st.booleans(), max_size=MAX_IO).map(tuple)),
    st.builds(InputChanged, u8, st.booleans(), u32),
)
framed = st.tuples(messages, u8)


def test_every_message_type_has_a_strategy_and_a_class() -> None:
    assert set(MESSAGE_CLASSES) == set(MessageType)


@given(messages, u8)
def test_every_message_round_trips_through_its_payload_and_the_wire(
    message: Message, seq: int
) -> None:
    payload = message.to_payload()
    assert len(payload) <= MAX_PAYLOAD
    assert type(message).from_payload(payload) == message
    wire = encode_message(message, seq)
    assert len(wire) <= MAX_WIRE
    assert wire.endswith(b"\x00")
    assert b"\x00" not in wire[:-1]
    [frame] = FrameDecoder().feed(wire)
    assert frame == Frame(message.TYPE, seq, payload)
    assert isinstance(frame, Frame)
    assert decode_message(frame) == message


@given(st.lists(framed, max_size=12), st.data())
def test_frames_decode_identically_however_the_bytes_are_split(
    sent: list[tuple[Message, int]], data: st.DataObject
) -> None:
    stream = b"".join(encode_message(m, seq) for m, seq in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder()
    out: list[Frame | FrameError] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[start:end])
    assert [(decode_message(f), f.seq) for f in out if isinstance(f, Frame)] == sent
    assert len(out) == len(sent)


@given(st.lists(st.binary(max_size=600), max_size=12))
def test_random_bytes_never_crash_the_decoder_and_its_buffer_stays_bounded(
    chunks: list[bytes],
) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        for item in decoder.feed(chunk):
            assert isinstance(item, Frame | FrameError)
            if isinstance(item, Frame):  # noise that happens to be a frame: still no crash
                with contextlib.suppress(PayloadError):
                    decode_message(item)
        assert len(decoder._buffer) <= MAX_ENCODED


@given(st.lists(st.tuples(st.binary(max_size=200), framed), min_size=1, max_size=8))
def test_valid_frames_embedded_in_noise_are_all_recovered(
    pieces: list[tuple[bytes, tuple[Message, int]]],
) -> None:
    # Noise ends where a delimiter arrives: the sender's 0x00 before each frame.
    stream = b"".join(noise + b"\x00" + encode_message(m, seq) for noise, (m, seq) in pieces)
    recovered = [(f.type, f.seq, f.payload) for f in FrameDecoder().feed(stream)
                 if isinstance(f, Frame)]
    wanted = [(m.TYPE.value, seq, m.to_payload()) for _, (m, seq) in pieces]
    it = iter(recovered)
    assert all(any(got == want for got in it) for want in wanted), (recovered, wanted)


def test_garbage_without_a_delimiter_is_one_oversize_error_then_the_decoder_resyncs() -> None:
    decoder = FrameDecoder()
    hello = encode_message(Hello(Role.MCU, 7, 16, 16, 3000, "fw"), 0)
    out = decoder.feed(b"\x55" * 1000)
    out += decoder.feed(b"\x55" * 1000)
    out += decoder.feed(hello)  # swallowed: no 0x00 has ended the garbage yet
    out += decoder.feed(hello)
    assert out == [FrameError(FrameErrorKind.OVERSIZE, b"\x55" * 16),
                   Frame(MessageType.HELLO, 0, hello_payload(hello))]
    assert decoder.errors[FrameErrorKind.OVERSIZE] == 1


def hello_payload(wire: bytes) -> bytes:
    raw: bytes = cobs.decode(wire[:-1])
    return raw[4:-2]


def test_garbage_ended_by_a_delimiter_loses_no_frame() -> None:
    decoder = FrameDecoder()
    pulse = encode_message(Pulse(1, 2, 300), 9)
    out = decoder.feed(b"\x13\x37" * 20 + b"\x00" + pulse)
    assert out[-1] == Frame(MessageType.PULSE, 9, Pulse(1, 2, 300).to_payload())
    assert all(isinstance(item, FrameError) for item in out[:-1])


def cobs_frame(raw: bytes) -> bytes:
    encoded: bytes = cobs.encode(raw)
    return encoded + b"\x00"


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "big")


@pytest.mark.parametrize(
    ("wire", "kind"),
    [
        (b"\x05\x01\x00", FrameErrorKind.BAD_COBS),
        (cobs_frame(b"\x01\x02\x00"), FrameErrorKind.BAD_LENGTH),
        (cobs_frame(frame_bytes(MessageType.PULSE, 1, b"\x01\x00\x02\x10\x00")[:-1] + b"\x00"),
         FrameErrorKind.BAD_CRC),
        (cobs_frame(with_crc(b"\x02\x02\x00\x00")), FrameErrorKind.BAD_VERSION),
        (cobs_frame(with_crc(b"\x01\x02\x00\x05\x01")), FrameErrorKind.BAD_LENGTH),
        (b"\x01" * (MAX_ENCODED + 1) + b"\x00", FrameErrorKind.OVERSIZE),
    ],
)
def test_each_kind_of_bad_frame_is_reported_and_counted(wire: bytes, kind: FrameErrorKind) -> None:
    decoder = FrameDecoder()
    [error] = decoder.feed(wire)
    assert isinstance(error, FrameError)
    assert error.kind is kind
    assert decoder.errors[kind] == 1
    assert decoder.feed(encode_message(ReadInputs(), 3)) == [Frame(MessageType.READ_INPUTS, 3, b"")]


def test_consecutive_delimiters_are_ignored() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00\x00") == []
    assert sum(decoder.errors.values()) == 0


def test_a_frame_of_maximum_size_passes_and_a_longer_payload_is_refused() -> None:
    wire = encode_frame(0x7F, 0, bytes(range(MAX_PAYLOAD)))
    assert len(wire) == MAX_WIRE
    assert FrameDecoder().feed(wire) == [Frame(0x7F, 0, bytes(range(MAX_PAYLOAD)))]
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(0x7F, 0, bytes(MAX_PAYLOAD + 1))


def test_crc_is_ccitt_false() -> None:
    assert crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize(
    ("type_", "payload", "status"),
    [
        (0x7F, b"", Status.UNKNOWN_TYPE),
        (MessageType.PULSE, b"\x01\x00\x02", Status.BAD_LENGTH),
        (MessageType.PULSE, b"\x01\x00\x02\x00\x00", Status.BAD_VALUE),
        (MessageType.SET_OUTPUT, b"\x01\x00\x02\x02", Status.BAD_VALUE),
        (MessageType.HELLO, b"\x01\x07" + bytes(8), Status.BAD_VALUE),
        (MessageType.HELLO, b"\x01\x00" + bytes(8) + b"\xff", Status.BAD_VALUE),
        (MessageType.HELLO, bytes(9), Status.BAD_LENGTH),
        (MessageType.ACK, b"\x10\x99\x00\x00\x00\x00", Status.BAD_VALUE),
        (MessageType.INPUTS, b"", Status.BAD_LENGTH),
        (MessageType.INPUTS, b"\x10\x00", Status.BAD_LENGTH),
        (MessageType.INPUTS, b"\x41" + bytes(9), Status.BAD_VALUE),
        (MessageType.INPUT_CHANGED, b"\x01\x02\x00\x00\x00\x00", Status.BAD_VALUE),
        (MessageType.READ_INPUTS, b"\x00", Status.BAD_LENGTH),
        (MessageType.HEARTBEAT, bytes(7), Status.BAD_LENGTH),
    ],
)
def test_a_malformed_payload_is_a_payload_error_with_the_status_to_answer(
    type_: int, payload: bytes, status: Status
) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_message(Frame(type_, 0, payload))
    assert caught.value.status is status


@given(st.sampled_from(MessageType), st.binary(max_size=MAX_PAYLOAD))
def test_any_payload_is_a_message_or_a_payload_error(type_: MessageType, payload: bytes) -> None:
    outcome: Message | PayloadError
    try:
        outcome = decode_message(Frame(type_, 0, payload))
    except PayloadError as exc:
        outcome = exc
    if isinstance(outcome, PayloadError):
        assert outcome.status in {Status.BAD_LENGTH, Status.BAD_VALUE}
    else:
        assert outcome.TYPE is type_
