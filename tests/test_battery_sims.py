"""The battery simulators: the scripted model, and both monitors on a real pty read through
pyserial, with every fault of docs/battery-protocols.md producing its documented effect.

Nothing here sleeps and hopes: each wait is for a condition, with a deadline.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

import pytest
import serial

from firmware_bridge import jbd_bms, vedirect
from firmware_bridge.jbd_bms import (
    JbdBasicInfo,
    JbdCellVoltages,
    JbdDecoder,
    JbdError,
    JbdHardwareVersion,
    JbdMessage,
    encode_request,
    read_basic_info,
    read_cell_voltages,
    read_hardware_version,
)
from firmware_bridge.vedirect import VeBlock, VeDirectDecoder
from simulators.batteries import (
    BatteryModel,
    JbdBmsSim,
    Phase,
    VeDirectSim,
    discharge_and_charge_curve,
)

T = TypeVar("T")
Answer = list[JbdMessage | jbd_bms.DecodeError]
Ask = Callable[[bytes], Answer]
DEADLINE_S = 5.0


class Decoder(Protocol[T]):
    def feed(self, data: bytes) -> list[T]: ...


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# --- the model, without threads --------------------------------------------------------------


def test_a_loan_discharges_by_coulomb_counting_then_the_return_idles_and_the_charge_refills(
) -> None:
    model = BatteryModel(capacity_ah=100.0, soc_pct=80.0)
    model.play(discharge_and_charge_curve(load_a=15, loan_s=3600, returned_s=600,
                                          charge_a=20, charge_s=3 * 3600), start=0.0)
    resting = model.snapshot(0.0).voltage_v
    loan = model.snapshot(1800.0)
    assert (loan.phase, loan.current_a) == ("loan", -15.0)
    assert loan.soc_pct == pytest.approx(72.5)
    assert loan.voltage_v < resting  # the load's drop across the cells' resistance
    assert loan.consumed_ah == pytest.approx(-7.5)
    returned = model.snapshot(3600.0 + 300.0)
    assert (returned.phase, returned.current_a) == ("returned", 0.0)
    assert returned.soc_pct == pytest.approx(65.0)
    charging = model.snapshot(3600.0 + 600.0 + 1800.0)
    assert (charging.phase, charging.current_a) == ("charge", 20.0)
    assert charging.soc_pct == pytest.approx(75.0)
    full = model.snapshot(3600.0 + 600.0 + 3 * 3600.0)
    assert full.soc_pct == 100.0
    assert full.current_a == 0.0  # the charger stops at full
    assert full.min_voltage_v < resting < full.max_voltage_v
    assert full.deepest_ah == pytest.approx(-15.0)


def test_an_empty_battery_trips_cell_undervoltage_and_a_charge_clears_it() -> None:
    model = BatteryModel(capacity_ah=10.0, soc_pct=5.0)
    model.play((Phase("load", 3600, -10.0), Phase("charge", 600, 5.0)), start=0.0)
    empty = model.snapshot(1800.0)
    assert empty.soc_pct == 0.0
    assert empty.current_a == 0.0
    assert "cell_undervoltage" in empty.protection
    assert not empty.discharge_fet
    assert empty.charge_fet
    charging = model.snapshot(3600.0 + 60.0)
    assert charging.current_a == 5.0
    assert "cell_undervoltage" not in charging.protection


def test_a_protection_flag_stops_the_current_its_fet_blocks() -> None:
    model = BatteryModel()
    model.play((Phase("loan", 3600, -20.0),), start=0.0)
    assert model.snapshot(10.0).current_a == -20.0
    model.set_protection("short_circuit")
    after = model.snapshot(20.0)
    assert after.current_a == 0.0
    assert (after.charge_fet, after.discharge_fet) == (True, False)
    model.set_protection("short_circuit", on=False)
    assert model.snapshot(30.0).current_a == -20.0
    with pytest.raises(ValueError, match="unknown protection"):
        model.set_protection("on_fire")


def test_readers_advancing_the_same_model_do_not_count_time_twice() -> None:
    model = BatteryModel(capacity_ah=100.0, soc_pct=50.0)
    model.play((Phase("loan", 7200, -10.0),), start=0.0, speed=2.0)
    first = model.snapshot(900.0)
    assert model.snapshot(900.0) == first
    assert model.snapshot(450.0) == first  # time never runs backwards
    assert first.soc_pct == pytest.approx(45.0)  # 1800 battery seconds at 10 A


def test_a_cycle_is_counted_per_capacitys_worth_of_charge_drawn() -> None:
    model = BatteryModel(capacity_ah=10.0, soc_pct=100.0, cycles=3)
    model.play((Phase("a", 2700, -10.0), Phase("b", 2700, 10.0), Phase("c", 2700, -10.0)),
               start=0.0)
    assert model.snapshot(2700.0).cycles == 3  # 7.5 Ah drawn
    assert model.snapshot(8100.0).cycles == 4  # 15 Ah drawn


def test_fields_set_from_tests_stay_as_set_without_a_script() -> None:
    model = BatteryModel(cell_count=4)
    model.soc_pct = 150.0
    model.current_a = -3.0
    model.temperature_c = None
    model.voltage_v = 13.0
    model.advance()
    assert model.soc_pct == 100.0
    assert model.current_a == -3.0
    assert model.temperature_c is None
    assert model.cells_v == (3.25,) * 4
    assert model.voltage_v == 13.0
    model.cells_v = (3.3, 3.31, 3.29)
    assert model.cell_count == 3
    with pytest.raises(ValueError, match="at least one cell"):
        model.cells_v = ()


def test_the_models_fields_are_read_and_written_under_one_lock() -> None:
    model = BatteryModel(cell_count=4)
    model.voltage_v = 12.0
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            for volts in (12.0, 14.0):
                model.voltage_v = volts

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(2000):
            snap = model.snapshot()
            assert len(set(snap.cells_v)) == 1  # never half of one write and half another
            assert snap.voltage_v in (pytest.approx(12.0), pytest.approx(14.0))
    finally:
        stop.set()
        thread.join()


# --- VE.Direct over a pty --------------------------------------------------------------------


class Line:
    """The agent's end of a simulator's pty, opened through pyserial like the device."""

    def __init__(self, path: str, baudrate: int) -> None:
        self.port = serial.serial_for_url(path, baudrate=baudrate, timeout=0.02)

    def read_until(self, decoder: Decoder[T], done: Callable[[list[T]], bool],
                   what: str) -> list[T]:
        items: list[T] = []
        deadline = time.monotonic() + DEADLINE_S
        while not done(items):
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {items!r}"
            items += decoder.feed(self.port.read(4096))
        return items


def live(items: Sequence[object]) -> list[VeBlock]:
    return [b for b in items if isinstance(b, VeBlock) and "PID" in b.fields]


@pytest.fixture
def model() -> BatteryModel:
    return BatteryModel(capacity_ah=100.0, soc_pct=55.0, temperature_c=18.0, current_a=-7.5)


@pytest.fixture
def bmv(model: BatteryModel) -> Iterator[tuple[VeDirectSim, Line, VeDirectDecoder]]:
    """A BMV on a pty, its line open, read up to the end of a period (a history block), so
    that what follows starts at a period's first byte."""
    with VeDirectSim(model=model, seed=3, period_s=0.02) as sim:
        line = Line(sim.path, vedirect.BAUDRATE)
        try:
            line.read_until(VeDirectDecoder(), lambda i: any(
                isinstance(b, VeBlock) and "H1" in b.fields for b in i), "a period's end")
            yield sim, line, VeDirectDecoder()
        finally:
            line.port.close()


def test_the_bmv_streams_checksummed_blocks_of_the_batterys_readings(
    bmv: tuple[VeDirectSim, Line, VeDirectDecoder], model: BatteryModel
) -> None:
    sim, line, decoder = bmv
    items = line.read_until(decoder, lambda i: len(live(i)) >= 3, "three live blocks")
    block = live(items)[-1]
    assert block.voltage_v == round(model.voltage_v, 3)
    assert block.current_a == -7.5
    assert block.soc_pct == 55.0
    assert block.temperature_c == 18.0
    assert block.product_id == 0x204
    assert (block.alarm, block.relay, block.alarm_reason) == (False, False, 0)
    assert any(isinstance(b, VeBlock) and "H7" in b.fields for b in items)
    assert sum(decoder.errors.values()) == 0
    assert sim.frames_sent >= decoder.frames


def test_hex_frames_arrive_inside_blocks_and_are_set_aside(
    bmv: tuple[VeDirectSim, Line, VeDirectDecoder],
) -> None:
    sim, line, decoder = bmv
    first = sim.written[0]  # the first period always carries one, inside a block
    at = first.index(b":A8DED00")
    assert at > 0
    assert not re.search(rb"Checksum\t.\Z", first[:at], re.DOTALL)
    assert len([b for b in VeDirectDecoder().feed(first) if isinstance(b, VeBlock)]) == 2
    sim.hex_rate = 1.0
    line.read_until(decoder, lambda i: decoder.hex_frames >= 4, "four HEX frames")
    assert sum(decoder.errors.values()) == 0
    assert decoder.frames >= 6


def test_bad_checksum_rate_turns_blocks_into_bad_checksum_errors(
    bmv: tuple[VeDirectSim, Line, VeDirectDecoder],
) -> None:
    sim, line, decoder = bmv
    sim.bad_checksum_rate = 1.0
    line.read_until(decoder, lambda i: decoder.errors["bad_checksum"] >= 6, "bad checksums")
    assert sim.frames_corrupted >= 6
    sim.bad_checksum_rate = 0.0
    line.read_until(decoder, lambda i: len(live(i)) >= 2, "good blocks again")


def test_a_stuck_bmv_repeats_the_same_bytes_whatever_the_battery_does(
    bmv: tuple[VeDirectSim, Line, VeDirectDecoder], model: BatteryModel
) -> None:
    sim, line, decoder = bmv
    sim.stuck(True)
    model.soc_pct = 10.0
    model.current_a = -50.0
    written = len(sim.written)
    wait_for(lambda: len(sim.written) >= written + 3, "three more periods")
    last = list(sim.written)[-3:]
    assert last[0] == last[1] == last[2]
    items = line.read_until(decoder, lambda i: len(live(i)) >= 4, "four live blocks")
    assert {b.soc_pct for b in live(items)[-2:]} == {55.0}
    sim.stuck(False)
    items = line.read_until(decoder, lambda i: any(b.soc_pct == 10.0 for b in live(i)),
                            "the battery again")


def test_an_unplugged_bmv_is_silent_until_plugged_back(
    bmv: tuple[VeDirectSim, Line, VeDirectDecoder],
) -> None:
    sim, line, decoder = bmv
    sim.unplug()
    line.port.reset_input_buffer()  # what was sent before the cable was pulled
    silent = sim.periods_silent
    wait_for(lambda: sim.periods_silent >= silent + 3, "three silent periods")
    assert line.port.in_waiting == 0
    sim.plug()
    line.read_until(decoder, lambda i: len(live(i)) >= 1, "a block after plugging back")


def test_noise_on_the_line_costs_one_error_and_the_stream_goes_on(
    bmv: tuple[VeDirectSim, Line, VeDirectDecoder],
) -> None:
    sim, line, decoder = bmv
    line.read_until(decoder, lambda i: len(live(i)) >= 1, "a block")
    sim.noise(b"\r\nGARB\xffAGE")
    line.read_until(decoder, lambda i: decoder.errors["bad_field"] == 1, "the noise")
    line.read_until(decoder, lambda i: len(live(i)) >= 3, "blocks after the noise")
    assert sum(decoder.errors.values()) == 1


def test_protection_and_low_soc_raise_the_bmv_alarm_relay_and_reason(
    bmv: tuple[VeDirectSim, Line, VeDirectDecoder], model: BatteryModel
) -> None:
    _, line, decoder = bmv
    model.set_protection("short_circuit")
    model.soc_pct = 8.0
    items = line.read_until(decoder, lambda i: any(b.alarm for b in live(i)), "the alarm")
    block = next(b for b in live(items) if b.alarm)
    assert block.relay is True
    assert block.alarm_reason == 4096 | 4


def test_a_scripted_loan_shows_in_the_stream(model: BatteryModel) -> None:
    model.play(discharge_and_charge_curve(load_a=20.0), speed=3600.0)
    with VeDirectSim(model=model, period_s=0.02) as sim:
        line = Line(sim.path, vedirect.BAUDRATE)
        try:
            items = line.read_until(VeDirectDecoder(), lambda i: any(
                (b.soc_pct or 100) < 50 for b in live(i)), "the charge going down")
        finally:
            line.port.close()
    assert live(items)[-1].current_a == -20.0


def test_seeded_simulators_send_the_same_bytes() -> None:
    def first_periods(seed: int) -> list[bytes]:
        with VeDirectSim(seed=seed, period_s=0.01, hex_rate=0.5) as sim:
            wait_for(lambda: len(sim.written) >= 8, "eight periods")
            return list(sim.written)[:8]

    assert first_periods(11) == first_periods(11)
    assert first_periods(11) != first_periods(12)


# --- JBD BMS over a pty ----------------------------------------------------------------------


@pytest.fixture
def bms(model: BatteryModel) -> Iterator[tuple[JbdBmsSim, Ask]]:
    """A BMS on a pty and ``ask(request)``: write it, return what comes back."""
    with JbdBmsSim(model=model, seed=5, model_name="JBD-TEST-4S") as sim:
        line = Line(sim.path, jbd_bms.BAUDRATE)
        decoder = JbdDecoder()

        def ask(request: bytes) -> Answer:
            line.port.write(request)
            return line.read_until(decoder, lambda i: len(i) >= 1, f"an answer to {request!r}")

        try:
            yield sim, ask
        finally:
            line.port.close()


def test_the_bms_answers_basic_information_from_the_battery(
    bms: tuple[JbdBmsSim, Ask], model: BatteryModel
) -> None:
    sim, ask = bms
    [info] = ask(read_basic_info())
    assert isinstance(info, JbdBasicInfo)
    assert info.voltage_v == round(model.voltage_v, 2)
    assert info.current_a == -7.5
    assert (info.soc_pct, info.remaining_ah, info.nominal_ah) == (55, 55.0, 100.0)
    assert (info.cell_count, info.temperatures_c) == (4, (18.0, 18.0))
    assert (info.charge_fet, info.discharge_fet, info.protection) == (True, True, frozenset())
    assert sim.frames_sent == 1


def test_the_bms_answers_cell_voltages_and_its_hardware_version(
    bms: tuple[JbdBmsSim, Ask], model: BatteryModel
) -> None:
    _, ask = bms
    model.cells_v = (3.301, 3.287, 3.312, 3.295)
    assert ask(read_cell_voltages()) == [JbdCellVoltages((3.301, 3.287, 3.312, 3.295))]
    assert ask(read_hardware_version()) == [JbdHardwareVersion("JBD-TEST-4S")]


def test_the_bms_refuses_other_registers_and_writes(
    bms: tuple[JbdBmsSim, Ask],
) -> None:
    _, ask = bms
    assert ask(encode_request(0xAA)) == [JbdError(0xAA, 0x80)]
    assert ask(encode_request(0xE1, b"\x00\x02", write=True)) == [JbdError(0xE1, 0x80)]


def test_a_raised_protection_flag_shows_in_the_answer_with_its_fet_off(
    bms: tuple[JbdBmsSim, Ask],
) -> None:
    sim, ask = bms
    sim.set_protection("short_circuit", True)
    [info] = ask(read_basic_info())
    assert isinstance(info, JbdBasicInfo)
    assert info.protection == {"short_circuit"}
    assert (info.charge_fet, info.discharge_fet) == (True, False)
    sim.set_protection("short_circuit", False)
    [info] = ask(read_basic_info())
    assert isinstance(info, JbdBasicInfo)
    assert info.protection == frozenset()


def test_bms_bad_checksum_rate_turns_answers_into_bad_checksum_errors(
    bms: tuple[JbdBmsSim, Ask],
) -> None:
    sim, ask = bms
    sim.bad_checksum_rate = 1.0
    [error] = ask(read_basic_info())
    assert isinstance(error, jbd_bms.DecodeError)
    assert error.kind == "bad_checksum"
    assert sim.frames_corrupted == 1


def test_a_stuck_bms_gives_the_same_answer_whatever_the_battery_does(
    bms: tuple[JbdBmsSim, Ask], model: BatteryModel
) -> None:
    sim, ask = bms
    before = ask(read_basic_info())
    sim.stuck(True)
    model.soc_pct = 12.0
    model.current_a = 30.0
    assert ask(read_basic_info()) == before
    sim.stuck(False)
    [info] = ask(read_basic_info())
    assert isinstance(info, JbdBasicInfo)
    assert (info.soc_pct, info.current_a) == (12, 30.0)


def test_an_unplugged_bms_does_not_answer_until_plugged_back(model: BatteryModel) -> None:
    with JbdBmsSim(model=model) as sim:
        line = Line(sim.path, jbd_bms.BAUDRATE)
        try:
            sim.unplug()
            line.port.write(read_basic_info())
            wait_for(lambda: sim.requests_ignored == 1, "the request to be heard and ignored")
            assert line.port.in_waiting == 0
            assert sim.frames_sent == 0
            sim.plug()
            line.port.write(read_basic_info())
            items = line.read_until(JbdDecoder(), lambda i: len(i) >= 1, "an answer")
            assert isinstance(items[0], JbdBasicInfo)
            assert sim.requests_received == 2
        finally:
            line.port.close()


def test_noise_before_an_answer_is_skipped(
    bms: tuple[JbdBmsSim, Ask],
) -> None:
    sim, ask = bms
    sim.noise(b"\x00\xdd\x01\x02\xff\x77")
    [info] = ask(read_basic_info())
    assert isinstance(info, JbdBasicInfo)


def test_one_model_feeds_both_monitors_and_both_threads_stop_on_close() -> None:
    model = BatteryModel(soc_pct=42.0)
    with VeDirectSim(model=model, period_s=0.01) as bmv, JbdBmsSim(model=model) as bms:
        threads = [bmv._thread, bms._thread]
        assert all(t.is_alive() and t.daemon for t in threads)
        line = Line(bms.path, jbd_bms.BAUDRATE)
        try:
            line.port.write(read_basic_info())
            [info] = line.read_until(JbdDecoder(), lambda i: len(i) >= 1, "an answer")
        finally:
            line.port.close()
        wait_for(lambda: b"SOC\t420" in b"".join(bmv.written), "the BMV's 42 %")
    assert isinstance(info, JbdBasicInfo)
    assert info.soc_pct == 42
    assert not any(t.is_alive() for t in threads)
    bmv.close()  # idempotent
