"""The badge reader line protocol: scans, garbage, and independence from chunking."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.badge_reader import (
    MAX_LINE_BYTES,
    BadgeReaderDecoder,
    BadgeScan,
    GarbageKind,
    GarbageLine,
    encode_scan,
)


def test_a_scan_line_decodes_with_crlf_or_lf() -> None:
    decoder = BadgeReaderDecoder()
    assert decoder.feed(b"A1 abc.def.ghi\r\nB2 x.y.z\n") == [
        BadgeScan("A1", "abc.def.ghi"), BadgeScan("B2", "x.y.z")
    ]


def test_blank_lines_are_ignored_and_garbage_is_reported() -> None:
    out = BadgeReaderDecoder().feed(b"\r\n\nhello world!\n\xff\xfe\n")
    assert out == [GarbageLine(GarbageKind.BAD_SYNTAX, b"hello world!"),
                   GarbageLine(GarbageKind.BAD_SYNTAX, b"\xff\xfe")]


def test_overlong_line_is_discarded_up_to_its_end_once() -> None:
    decoder = BadgeReaderDecoder()
    out = decoder.feed(b"A" * (MAX_LINE_BYTES + 10))
    out += decoder.feed(b"B" * 5000)
    out += decoder.feed(b"tail\nA1 ok.ok.ok\n")
    assert [type(m) for m in out] == [GarbageLine, BadgeScan]
    assert isinstance(out[0], GarbageLine)
    assert out[0].kind is GarbageKind.TOO_LONG
    assert out[1] == BadgeScan("A1", "ok.ok.ok")


scans = st.builds(
    BadgeScan,
    st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_.-]{1,300}", fullmatch=True),
)


@given(st.lists(scans, max_size=8), st.data())
def test_encoded_scans_decode_identically_however_the_bytes_are_split(
    messages: list[BadgeScan], data: st.DataObject
) -> None:
    stream = b"".join(encode_scan(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = BadgeReaderDecoder()
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[start:end])
    assert out == messages


@given(st.lists(st.binary(max_size=2000), max_size=10))
def test_arbitrary_bytes_never_crash_and_memory_stays_bounded(chunks: list[bytes]) -> None:
    decoder = BadgeReaderDecoder()
    for chunk in chunks:
        for message in decoder.feed(chunk):
            assert isinstance(message, BadgeScan | GarbageLine)
        assert len(decoder._buffer) <= MAX_LINE_BYTES
