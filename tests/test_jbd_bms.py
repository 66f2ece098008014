"""The JBD BMS codec: requests, responses, and a decoder that survives any input. The worked
examples of docs/battery-protocols.md are checked at the end."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.jbd_bms import (
    MAX_FRAME,
    PROTECTION_BITS,
    DecodeError,
    JbdBasicInfo,
    JbdCellVoltages,
    JbdDecoder,
    JbdError,
    JbdErrorKind,
    JbdHardwareVersion,
    JbdMessage,
    JbdRequest,
    JbdRequestDecoder,
    Protection,
    checksum,
    encode_basic_info,
    encode_cell_voltages,
    encode_error,
    encode_hardware_version,
    encode_request,
    encode_response,
    read_basic_info,
    read_cell_voltages,
    read_hardware_version,
)

# The manufacturer's worked examples (JBD "Smart BMS protocol V4").
BASIC = bytes.fromhex("dd 03 00 1b 17 00 00 00 02 d0 03 e8 00 00 20 78 00 00 00 00 00 00"
                      "10 48 03 0f 02 0b 76 0b 82 fb ff 77")
CELLS = bytes.fromhex("dd 04 00 1e 0f 66 0f 63 0f 63 0f 64 0f 3e 0f 63 0f 37 0f 5b 0f 65"
                      "0f 3b 0f 63 0f 63 0f 3c 0f 66 0f 3d f9 f9 77")
VERSION = bytes.fromhex("dd 05 00 0a 30 31 32 33 34 35 36 37 38 39 fd e9 77")

INFO = JbdBasicInfo(
    voltage_v=13.28, current_a=-12.5, remaining_ah=81.2, nominal_ah=100.0, cycles=42,
    soc_pct=81, protection=frozenset({Protection.SHORT_CIRCUIT}), charge_fet=True,
    discharge_fet=False, cell_count=4, temperatures_c=(21.5, -3.2), production_date=0x2C7C,
    balance=0b1001, software_version=0x23)


def decode_all(*chunks: bytes, idle: bool = False
               ) -> tuple[list[JbdMessage | DecodeError], JbdDecoder]:
    decoder = JbdDecoder()
    out: list[JbdMessage | DecodeError] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    if idle:
        out += decoder.line_idle()
    return out, decoder


def reference_checksum(body: bytes) -> bytes:
    """From the manufacturer's words: sum the bytes, invert, add one; high byte first."""
    return ((~sum(body) + 1) & 0xFFFF).to_bytes(2, "big")


# --- requests and framing ------------------------------------------------------------------


def test_the_three_read_requests_are_the_manufacturers_bytes() -> None:
    assert read_basic_info() == bytes.fromhex("dd a5 03 00 ff fd 77")
    assert read_cell_voltages() == bytes.fromhex("dd a5 04 00 ff fc 77")
    assert read_hardware_version() == bytes.fromhex("dd a5 05 00 ff fb 77")


def test_the_checksum_covers_status_or_register_length_and_data_never_the_first_two() -> None:
    for frame in (BASIC, CELLS, VERSION, read_basic_info(), encode_error(3),
                  encode_request(0xE1, b"\x00\x02", write=True)):
        assert frame[-3:-1] == reference_checksum(frame[2:-3])
        assert checksum(frame[2:-3]) == int.from_bytes(frame[-3:-1], "big")
    assert checksum(b"\x00\x00") == 0  # 0x10000 wraps to 0x0000


def test_an_error_response_decodes_as_a_jbd_error() -> None:
    assert encode_error(0x04) == bytes.fromhex("dd 04 80 00 ff 80 77")
    assert decode_all(encode_error(0x04))[0] == [JbdError(0x04, 0x80)]


def test_a_request_decoder_reads_what_the_host_sends() -> None:
    decoder = JbdRequestDecoder()
    write = encode_request(0xE1, b"\x00\x02", write=True)
    assert decoder.feed(b"\x00" + read_basic_info() + write + read_cell_voltages()[:3]) == [
        JbdRequest(0x03), JbdRequest(0xE1, b"\x00\x02", write=True)]
    assert decoder.feed(read_cell_voltages()[3:]) == [JbdRequest(0x04)]
    assert decoder.frames == 3


# --- the manufacturer's examples -------------------------------------------------------------


def test_basic_information_decodes_in_si_units_and_re_encodes_byte_for_byte() -> None:
    [info] = decode_all(BASIC)[0]
    assert info == JbdBasicInfo(
        voltage_v=58.88, current_a=0.0, remaining_ah=7.2, nominal_ah=10.0, cycles=0,
        soc_pct=72, protection=frozenset(), charge_fet=True, discharge_fet=True,
        cell_count=15, temperatures_c=(20.3, 21.5), production_date=0x2078, balance=0,
        software_version=0x10)
    assert isinstance(info, JbdBasicInfo)
    assert str(info.manufactured) == "2016-03-24"
    assert encode_basic_info(info) == BASIC


def test_cell_voltages_decode_in_volts_and_re_encode_byte_for_byte() -> None:
    [cells] = decode_all(CELLS)[0]
    assert isinstance(cells, JbdCellVoltages)
    assert len(cells.cells_v) == 15
    assert cells.cells_v[:3] == (3.942, 3.939, 3.939)
    assert (cells.min_v, cells.max_v) == (3.895, 3.942)
    assert encode_cell_voltages(cells) == CELLS
    assert encode_cell_voltages(list(cells.cells_v)) == CELLS


def test_the_hardware_version_is_its_model_string() -> None:
    assert decode_all(VERSION)[0] == [JbdHardwareVersion("0123456789")]
    assert encode_hardware_version("0123456789") == VERSION


def test_protection_bits_follow_the_manufacturers_table() -> None:
    assert PROTECTION_BITS["cell_overvoltage"] == 0
    assert PROTECTION_BITS["short_circuit"] == 10
    assert PROTECTION_BITS["mos_software_lock"] == 12
    assert len(PROTECTION_BITS) == 16
    for name, bit in PROTECTION_BITS.items():
        wire = encode_basic_info(replace(INFO, protection=frozenset({name})))
        assert int.from_bytes(wire[4 + 16 : 4 + 18], "big") == 1 << bit
        [info] = decode_all(wire)[0]
        assert isinstance(info, JbdBasicInfo)
        assert info.protection == {name}


def test_bytes_after_the_temperatures_are_kept_and_an_impossible_date_is_none() -> None:
    info = replace(INFO, extra=b"\x01\x02\x03", production_date=0)
    [decoded] = decode_all(encode_basic_info(info))[0]
    assert decoded == info
    assert isinstance(decoded, JbdBasicInfo)
    assert decoded.manufactured is None


@pytest.mark.parametrize(
    "info",
    [replace(INFO, voltage_v=-1), replace(INFO, voltage_v=700), replace(INFO, soc_pct=256),
     replace(INFO, current_a=400), replace(INFO, temperatures_c=(-300.0,)),
     replace(INFO, protection=frozenset({"on_fire"})), replace(INFO, balance=1 << 32),
     replace(INFO, voltage_v=float("inf")), replace(INFO, extra=bytes(255))],
)
def test_basic_information_out_of_range_is_refused(info: JbdBasicInfo) -> None:
    with pytest.raises(ValueError, match=r"range|protection|bytes"):
        encode_basic_info(info)


@pytest.mark.parametrize("cells", [[], [3.3] * 128, [70.0], [-0.1], [float("nan")]])
def test_cell_voltages_out_of_range_are_refused(cells: list[float]) -> None:
    with pytest.raises(ValueError, match=r"cells|range"):
        encode_cell_voltages(cells)


# --- decoding: errors and resynchronisation ------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "kind"),
    [(BASIC[:-3] + b"\x00\x00" + BASIC[-1:], JbdErrorKind.BAD_CHECKSUM),
     (BASIC[:-1] + b"\x78", JbdErrorKind.BAD_END),
     (encode_response(0x03, bytes(10)), JbdErrorKind.BAD_PAYLOAD),
     (encode_response(0x03, bytes(22) + b"\x05"), JbdErrorKind.BAD_PAYLOAD),  # 5 NTCs, none sent
     (encode_response(0x04, b""), JbdErrorKind.BAD_PAYLOAD),
     (encode_response(0x04, b"\x0f\x66\x0f"), JbdErrorKind.BAD_PAYLOAD),
     (encode_response(0xAA, bytes(4)), JbdErrorKind.UNKNOWN_REGISTER)],
    ids=["checksum", "end", "short-basic", "missing-ntc", "no-cells", "odd-cells", "register"],
)
def test_each_kind_of_bad_frame_is_reported_counted_and_the_next_frame_decodes(
    wire: bytes, kind: JbdErrorKind
) -> None:
    out, decoder = decode_all(wire + VERSION)
    assert len(out) == 2
    assert isinstance(out[0], DecodeError)
    assert out[0].kind is kind
    assert out[0].sample == wire[:16]
    assert out[1] == JbdHardwareVersion("0123456789")
    assert decoder.errors[kind] == 1
    assert sum(decoder.errors.values()) == 1


def test_the_hosts_own_request_echoed_on_a_half_duplex_line_is_noise() -> None:
    out, decoder = decode_all(read_basic_info() + BASIC)
    assert [type(m) for m in out] == [JbdBasicInfo]
    assert decoder.discarded_bytes == 7
    assert sum(decoder.errors.values()) == 0


def test_a_frame_hidden_in_a_failed_candidate_is_found() -> None:
    # Noise that looks like a header announcing 200 bytes swallows the next response, until
    # its length is reached or the line goes idle; then the response is found inside it.
    noise = b"\xdd\x03\x00\xc8"
    out, decoder = decode_all(noise + VERSION)
    assert out == []
    assert decoder.buffered == len(noise + VERSION)
    assert decoder.line_idle() == [DecodeError(JbdErrorKind.TRUNCATED, (noise + VERSION)[:16]),
                                   JbdHardwareVersion("0123456789")]
    assert decoder.buffered == 0
    out, _ = decode_all(noise + VERSION + bytes(200) + CELLS)
    assert [type(m) for m in out] == [DecodeError, JbdHardwareVersion, JbdCellVoltages]


def test_line_idle_between_frames_reports_nothing() -> None:
    out, decoder = decode_all(VERSION, b"\x01\x02", idle=True)
    assert out == [JbdHardwareVersion("0123456789")]
    assert sum(decoder.errors.values()) == 0


# --- decoding: properties ------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
infos = st.builds(
    JbdBasicInfo,
    voltage_v=u16.map(lambda r: r / 100), current_a=st.integers(-0x8000, 0x7FFF).map(
        lambda r: r / 100),
    remaining_ah=u16.map(lambda r: r / 100), nominal_ah=u16.map(lambda r: r / 100),
    cycles=u16, soc_pct=st.integers(0, 100),
    protection=st.frozensets(st.sampled_from(sorted(PROTECTION_BITS))),
    charge_fet=st.booleans(), discharge_fet=st.booleans(), cell_count=st.integers(0, 32),
    temperatures_c=st.lists(u16.map(lambda r: (r - 2731) / 10), max_size=8).map(tuple),
    production_date=u16, balance=st.integers(0, 0xFFFFFFFF),
    software_version=st.integers(0, 255), extra=st.binary(max_size=16),
)
cell_sets = st.lists(u16.map(lambda r: r / 1000), min_size=1, max_size=32).map(
    lambda v: JbdCellVoltages(tuple(v)))
messages: st.SearchStrategy[JbdMessage] = st.one_of(
    infos, cell_sets, st.builds(JbdHardwareVersion, st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)),
    st.builds(JbdError, st.sampled_from([3, 4, 5]), st.just(0x80)))


# Noise made of the protocol's own pieces (start, end, status, register bytes) as well.
PIECES = [b"\xdd", b"\x77", b"\x00", b"\x80", b"\x03", b"\x04", b"\xa5", b"\xff",
          b"\xdd\x03\x00", b"\xdd\x04\x80\x00", read_basic_info()]
noise = st.one_of(st.binary(max_size=300), st.lists(
    st.one_of(st.sampled_from(PIECES), st.binary(max_size=4)), max_size=60).map(b"".join))


def encode(message: JbdMessage) -> bytes:
    if isinstance(message, JbdBasicInfo):
        return encode_basic_info(message)
    if isinstance(message, JbdCellVoltages):
        return encode_cell_voltages(message)
    if isinstance(message, JbdHardwareVersion):
        return encode_hardware_version(message.model)
    return encode_error(message.register)


@given(messages)
def test_every_message_round_trips_through_the_wire(message: JbdMessage) -> None:
    wire = encode(message)
    assert wire[0] == 0xDD
    assert wire[-1] == 0x77
    assert len(wire) == 7 + wire[3]
    assert wire[-3:-1] == reference_checksum(wire[2:-3])
    assert decode_all(wire)[0] == [message]


@given(st.lists(messages, max_size=8), st.data())
def test_frames_decode_identically_however_the_bytes_are_split(
    sent: list[JbdMessage], data: st.DataObject
) -> None:
    stream = b"".join(encode(m) for m in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    out, decoder = decode_all(*chunks)
    assert out == sent
    assert decoder.frames == len(sent)


@given(st.lists(noise, max_size=12))
def test_random_bytes_never_crash_the_decoder_and_its_buffer_stays_bounded(
    chunks: list[bytes],
) -> None:
    decoder = JbdDecoder()
    for chunk in chunks:
        for item in decoder.feed(chunk):
            assert isinstance(item, JbdMessage | DecodeError)
        assert decoder.buffered <= MAX_FRAME
    decoder.line_idle()
    assert decoder.buffered == 0


@given(st.lists(st.tuples(noise, messages), min_size=1, max_size=6), st.data())
def test_valid_frames_embedded_in_noise_are_all_recovered_in_order(
    pieces: list[tuple[bytes, JbdMessage]], data: st.DataObject
) -> None:
    stream = b"".join(noise + encode(m) for noise, m in pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    out, _ = decode_all(*chunks, idle=True)
    recovered = iter([m for m in out if not isinstance(m, DecodeError)])
    wanted = [m for _, m in pieces]
    assert all(any(got == want for got in recovered) for want in wanted), (out, wanted)


# --- the worked examples of docs/battery-protocols.md ---------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "battery-protocols.md"
FENCE = re.compile(r"^```jbd-example\n(.*?)^```$", re.MULTILINE | re.DOTALL)
REQUESTS = {"read_basic_info": read_basic_info, "read_cell_voltages": read_cell_voltages,
            "read_hardware_version": read_hardware_version}
STRUCTURAL = {"name", "direction", "request", "message", "wire", "checksum"}


@dataclass(frozen=True)
class Example:
    name: str
    keys: dict[str, str]


def parse(block: str) -> Example:
    keys: dict[str, str] = {}
    last = ""
    for line in block.splitlines():
        if line.startswith("  "):
            keys[last] += " " + line.strip()
        else:
            last, _, value = line.partition(": ")
            keys[last] = value
    return Example(keys["name"], keys)


EXAMPLES = [parse(b) for b in FENCE.findall(DOC.read_text(encoding="utf-8"))]


def test_the_document_has_jbd_examples_of_every_request_response_and_an_error() -> None:
    names = [e.name for e in EXAMPLES]
    assert len(names) == len(set(names))
    assert {e.keys.get("request") for e in EXAMPLES} >= set(REQUESTS)
    assert {e.keys.get("message") for e in EXAMPLES} >= {
        "JbdBasicInfo", "JbdCellVoltages", "JbdHardwareVersion", "JbdError"}
    assert any("short_circuit" in e.keys.get("protection", "") for e in EXAMPLES)


def test_the_documents_protection_table_is_the_codecs() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("### Protection flags", 1)[1].split("###", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `([a-z_0-9]+)` \|", section, re.MULTILINE)
    assert {name: int(bit) for bit, name in rows} == PROTECTION_BITS
    assert [p.value for p in Protection] == [name for _, name in rows]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_jbd_worked_example_matches_the_codec_byte_for_byte(example: Example) -> None:
    keys = example.keys
    wire = bytes.fromhex(keys["wire"])
    assert wire[0] == 0xDD
    assert wire[-1] == 0x77
    assert len(wire) == 7 + wire[3]
    assert bytes.fromhex(keys["checksum"]) == wire[-3:-1] == reference_checksum(wire[2:-3])
    if "request" in keys:
        assert REQUESTS[keys["request"]]() == wire
        assert JbdRequestDecoder().feed(wire) == [JbdRequest(wire[2])]
        return
    [message] = decode_all(wire)[0]
    assert not isinstance(message, DecodeError)
    assert type(message).__name__ == keys["message"]
    assert encode(message) == wire
    names = {f.name for f in fields(message)} | {"manufactured", "min_v", "max_v"}
    for name, text in keys.items():
        if name in STRUCTURAL:
            continue
        assert name in names, f"{example.name}: no field {name}"
        actual = getattr(message, name)
        try:
            expected = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            expected = text
        if name == "protection":
            expected = frozenset(expected)
        if isinstance(expected, str) and not isinstance(actual, str):
            actual = str(actual)
        assert actual == expected, f"{example.name}: {name}"
