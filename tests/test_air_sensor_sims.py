"""The PMS5003 and SDS011 simulators, over a real pty through pyserial, decoded by the
codecs: commands answered as docs/sensors-protocols.md says, sleep and wake, the working
period, and each fault with its documented effect. Waits are on conditions, with
deadlines; where silence is the point, a later answer proves the earlier command was read.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

import pytest
import serial

from firmware_bridge import pms5003, sds011
from firmware_bridge.pms5003 import Pms5003Decoder, PmsAck, PmsFrame
from firmware_bridge.sds011 import Sds011Decoder, SdsReading, SdsReply
from simulators.air_sensors import (
    Pms5003Sim,
    Sds011Sim,
    diesel_truck,
    pollution_episode,
    steady,
    wood_smoke_evening,
)

_M = TypeVar("_M")


class Decoder(Protocol[_M]):
    def feed(self, data: bytes) -> list[_M]: ...


class Host(Generic[_M]):
    """The agent's end of the line: a pyserial port and a decoder."""

    def __init__(self, path: str, decoder: Decoder[_M]) -> None:
        self.port = serial.serial_for_url(path, baudrate=9600, timeout=0.02)
        self.decoder = decoder
        self.received: list[_M] = []

    def send(self, command: bytes) -> None:
        self.port.write(command)

    def until(self, done: Callable[[list[_M]], bool], timeout_s: float = 5.0) -> list[_M]:
        """Read until ``done(received)``; return and forget what was received."""
        deadline = time.monotonic() + timeout_s
        while not done(self.received):
            assert time.monotonic() < deadline, f"timed out; received {self.received}"
            self.received += self.decoder.feed(self.port.read(4096))
        received, self.received = self.received, []
        return received

    def drain(self) -> list[_M]:
        """What has arrived so far (one read), forgotten."""
        received, self.received = self.received + self.decoder.feed(self.port.read(4096)), []
        return received

    def next_of(self, kind: type[_M], timeout_s: float = 5.0) -> list[_M]:
        """Everything up to and including the next ``kind``."""
        return self.until(lambda got: any(isinstance(m, kind) for m in got), timeout_s)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def wait_simulated(sim: Pms5003Sim | Sds011Sim, seconds: float) -> None:
    start = sim.elapsed_s
    wait_for(lambda: sim.elapsed_s > start + seconds)


def only(kind: type[_M], items: Sequence[object]) -> list[_M]:
    return [m for m in items if isinstance(m, kind)]


FAST = 50.0  # simulated seconds per wall second


@pytest.fixture
def pms() -> Iterator[Pms5003Sim]:
    with Pms5003Sim(steady(pm2_5=12.0, pm10=20.0, pm1_0=8.0), seed=1, speed=FAST) as sim:
        yield sim


@pytest.fixture
def pms_host(pms: Pms5003Sim) -> Iterator[Host[pms5003.PmsMessage]]:
    host: Host[pms5003.PmsMessage] = Host(pms.path, Pms5003Decoder())
    yield host
    host.port.close()


def passive(host: Host[pms5003.PmsMessage]) -> None:
    host.send(pms5003.passive_mode())
    assert host.next_of(PmsAck)[-1] == PmsAck(0xE1, 0)


# --- PMS5003 --------------------------------------------------------------------------------


def test_pms_streams_frames_in_active_mode_at_power_up(
        pms: Pms5003Sim, pms_host: Host[pms5003.PmsMessage]) -> None:
    frames = only(PmsFrame, pms_host.until(lambda got: len(only(PmsFrame, got)) >= 3))
    assert all(f.values() == {"pm1_0": 8.0, "pm2_5": 12.0, "pm10": 20.0} for f in frames)
    assert (frames[0].pm2_5_cf1, frames[0].pm10_cf1) == (12, 20)
    counts = [frames[0].count_0_3, frames[0].count_0_5, frames[0].count_1_0,
              frames[0].count_2_5, frames[0].count_5_0, frames[0].count_10]
    assert counts == sorted(counts, reverse=True)
    assert not pms.passive


def test_pms_in_passive_mode_answers_each_read_with_one_frame(
        pms: Pms5003Sim, pms_host: Host[pms5003.PmsMessage]) -> None:
    passive(pms_host)
    assert pms.passive
    sent = pms.frames_sent
    for _ in range(3):
        pms_host.send(pms5003.read_passive())
        [frame] = only(PmsFrame, pms_host.next_of(PmsFrame))
        assert frame.pm2_5 == 12
    assert pms.frames_sent == sent + 3  # and nothing unasked in between
    assert pms.commands_received == 4


def test_pms_acknowledges_sleep_is_silent_asleep_and_wakes_without_an_ack(
        pms: Pms5003Sim, pms_host: Host[pms5003.PmsMessage]) -> None:
    passive(pms_host)
    pms_host.send(pms5003.sleep())
    assert pms_host.next_of(PmsAck)[-1] == PmsAck(0xE4, 0)
    assert pms.asleep
    pms_host.send(pms5003.read_passive())  # asleep: ignored
    pms_host.send(pms5003.wake())
    pms_host.send(pms5003.read_passive())
    received = pms_host.next_of(PmsFrame)
    assert len(received) == 1  # one frame, for the read after the wake; no ack
    assert isinstance(received[0], PmsFrame)
    wait_for(lambda: not pms.asleep)  # (already true: the frame came)
    assert pms.commands_received == 5


def test_pms_back_in_active_mode_acknowledges_and_streams_again(
        pms: Pms5003Sim, pms_host: Host[pms5003.PmsMessage]) -> None:
    passive(pms_host)
    pms_host.send(pms5003.active_mode())
    assert only(PmsAck, pms_host.next_of(PmsAck)) == [PmsAck(0xE1, 1)]
    assert len(only(PmsFrame, pms_host.until(lambda got: len(got) >= 2))) >= 2


def test_pms_asleep_in_active_mode_sends_nothing_until_woken(
        pms: Pms5003Sim, pms_host: Host[pms5003.PmsMessage]) -> None:
    pms_host.send(pms5003.sleep())
    pms_host.next_of(PmsAck)
    sent = pms.frames_sent
    wait_simulated(pms, 5)  # five frame intervals
    assert pms.frames_sent == sent
    pms_host.send(pms5003.wake())
    assert pms_host.next_of(PmsFrame)


# --- SDS011 ---------------------------------------------------------------------------------


@pytest.fixture
def sds() -> Iterator[Sds011Sim]:
    with Sds011Sim(steady(pm2_5=12.34, pm10=20.06), seed=1, speed=FAST) as sim:
        yield sim


@pytest.fixture
def sds_host(sds: Sds011Sim) -> Iterator[Host[sds011.SdsMessage]]:
    host: Host[sds011.SdsMessage] = Host(sds.path, Sds011Decoder())
    yield host
    host.port.close()


def reply_to(host: Host[sds011.SdsMessage], command: bytes) -> SdsReply:
    host.send(command)
    reply = only(SdsReply, host.next_of(SdsReply))[-1]
    assert reply.command == command[2]
    return reply


def query_mode(host: Host[sds011.SdsMessage]) -> None:
    reply = reply_to(host, sds011.query_mode())
    assert (reply.is_set, reply.value) == (True, 1)
    host.drain()  # readings sent before the switch


def test_sds_reports_every_second_in_active_mode_to_the_tenth(
        sds: Sds011Sim, sds_host: Host[sds011.SdsMessage]) -> None:
    readings = only(SdsReading, sds_host.until(lambda got: len(got) >= 3))
    assert all(r == SdsReading(12.3, 20.1, 0xA160) for r in readings)
    assert readings[0].values() == {"pm2_5": 12.3, "pm10": 20.1}
    assert not sds.query_mode


def test_sds_in_query_mode_answers_a_query_and_nothing_else(
        sds: Sds011Sim, sds_host: Host[sds011.SdsMessage]) -> None:
    assert reply_to(sds_host, sds011.current_reporting_mode()).value == 0  # active
    query_mode(sds_host)
    assert sds.query_mode
    sent = sds.frames_sent
    sds_host.send(sds011.query())
    assert only(SdsReading, sds_host.next_of(SdsReading)) == [SdsReading(12.3, 20.1, 0xA160)]
    assert reply_to(sds_host, sds011.current_reporting_mode()).value == 1
    assert sds.frames_sent == sent + 2


def test_sds_asleep_ignores_queries_but_answers_commands(
        sds: Sds011Sim, sds_host: Host[sds011.SdsMessage]) -> None:
    query_mode(sds_host)
    assert reply_to(sds_host, sds011.sleep()).value == 0
    assert sds.asleep
    sds_host.send(sds011.query())  # ignored: the reply below comes first and alone
    sds_host.send(sds011.current_work_state())
    received = sds_host.next_of(SdsReply)
    assert [type(m) for m in received] == [SdsReply]
    assert only(SdsReply, received)[0].value == 0
    assert reply_to(sds_host, sds011.work()).value == 1
    wait_for(lambda: not sds.asleep)  # (already true: the reply came)
    sds_host.send(sds011.query())
    assert only(SdsReading, sds_host.next_of(SdsReading))


def test_sds_working_period_works_30_s_then_sleeps_and_reports_once_per_period() -> None:
    with Sds011Sim(steady(), seed=3, speed=240.0) as sim:  # a minute in a quarter second
        host: Host[sds011.SdsMessage] = Host(sim.path, Sds011Decoder())
        try:
            reply = reply_to(host, sds011.work_period(1))
            assert (reply.is_set, reply.value, sim.work_period) == (True, 1, 1)
            assert reply_to(host, sds011.current_work_period()).value == 1
            wait_for(lambda: sim.asleep)  # after the 30 s work phase
            wait_for(lambda: not sim.asleep)  # the next minute begins
            assert len(only(SdsReading, host.drain())) == 1  # sent as the work phase ended
            host.next_of(SdsReading)
            first = sim.elapsed_s
            host.next_of(SdsReading)
            assert sim.elapsed_s - first == pytest.approx(60, abs=15)
            assert reply_to(host, sds011.work_period(0)).value == 0
            assert len(only(SdsReading, host.until(lambda got: len(got) >= 3))) >= 3
        finally:
            host.port.close()


def test_sds_answers_only_its_own_id_or_everyone_and_can_be_renamed(
        sds: Sds011Sim, sds_host: Host[sds011.SdsMessage]) -> None:
    query_mode(sds_host)
    reply = reply_to(sds_host, sds011.set_device_id(0xA001, device_id=0xA160))
    assert reply.device_id == 0xA001 == sds.device_id
    sds_host.send(sds011.query(0xA160))  # no longer its id: ignored
    sds_host.send(sds011.query(0xA001))
    [reading] = only(SdsReading, sds_host.next_of(SdsReading))
    assert reading.device_id == 0xA001
    assert reply_to(sds_host, sds011.firmware_version()).firmware_version == (15, 7, 10)
    assert sds.commands_received == 5  # the one for A160 was read, and ignored


# --- faults ---------------------------------------------------------------------------------


def test_bad_checksums_are_counted_by_the_decoder_one_per_corrupted_frame(
        pms: Pms5003Sim, pms_host: Host[pms5003.PmsMessage]) -> None:
    passive(pms_host)
    pms.bad_checksum_rate = 1.0
    for _ in range(3):
        pms_host.send(pms5003.read_passive())
    decoder = pms_host.decoder
    assert isinstance(decoder, Pms5003Decoder)
    pms_host.until(lambda got: decoder.errors["bad_checksum"] == 3)
    assert pms.frames_corrupted == 3
    assert decoder.frames == 0
    pms.bad_checksum_rate = 0.0
    pms_host.send(pms5003.read_passive())
    assert pms_host.next_of(PmsFrame)
    with pytest.raises(ValueError, match="outside"):
        pms.bad_checksum_rate = 1.5


def test_a_share_of_bad_checksums_is_seeded_and_each_is_counted(
        sds: Sds011Sim, sds_host: Host[sds011.SdsMessage]) -> None:
    sds.bad_checksum_rate = 0.5
    decoder = sds_host.decoder
    assert isinstance(decoder, Sds011Decoder)
    sds_host.until(lambda got: decoder.frames + decoder.errors["bad_checksum"] >= 20)
    assert decoder.errors["bad_checksum"] == sds.frames_corrupted > 0
    assert decoder.frames > 0


def test_noise_is_skipped_as_garbage_and_the_next_frame_decodes(
        pms: Pms5003Sim, pms_host: Host[pms5003.PmsMessage]) -> None:
    passive(pms_host)
    pms.noise(b"\x00\xff\x42\x13 line noise \x4d")
    pms_host.send(pms5003.read_passive())
    received = pms_host.next_of(PmsFrame)
    assert isinstance(received[-1], PmsFrame)
    decoder = pms_host.decoder
    assert isinstance(decoder, Pms5003Decoder)
    assert decoder.errors == {"bad_checksum": 0, "bad_length": 0, "garbage": 17}


def test_a_stuck_sensor_repeats_its_last_values_until_freed() -> None:
    def rising(t: float) -> Mapping[str, float]:
        return {"pm2_5": 5 + t, "pm10": 10 + 2 * t}

    with Pms5003Sim(rising, seed=4, speed=FAST) as sim:
        host: Host[pms5003.PmsMessage] = Host(sim.path, Pms5003Decoder())
        try:
            passive(host)
            sim.stuck(True)
            values = []
            for _ in range(3):
                wait_simulated(sim, 2)
                host.send(pms5003.read_passive())
                values.append(only(PmsFrame, host.next_of(PmsFrame))[0].values())
            assert values[0] == values[1] == values[2]
            sim.stuck(False)
            host.send(pms5003.read_passive())
            assert only(PmsFrame, host.next_of(PmsFrame))[0].pm2_5 > values[0]["pm2_5"]
        finally:
            host.port.close()


def test_an_unplugged_sensor_is_silent_and_deaf_until_plugged_back(
        pms: Pms5003Sim, pms_host: Host[pms5003.PmsMessage]) -> None:
    pms_host.next_of(PmsFrame)  # streaming
    pms.unplug()
    sent = pms.frames_sent
    pms_host.send(pms5003.passive_mode())  # lost
    wait_simulated(pms, 5)
    assert pms.frames_sent == sent
    assert pms.commands_received == 0
    pms.plug()
    wait_for(lambda: pms.frames_sent > sent)  # the command never arrived: it streams again
    assert not pms.passive


def test_frames_and_noise_from_many_threads_never_interleave(
        pms: Pms5003Sim, pms_host: Host[pms5003.PmsMessage]) -> None:
    burst, per_thread, threads = b"\x00\x01\x02\x03", 50, 4

    def chatter() -> None:
        for _ in range(per_thread):
            pms.noise(burst)

    workers = [threading.Thread(target=chatter, name=f"chatter-{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=5)
    decoder = pms_host.decoder
    assert isinstance(decoder, Pms5003Decoder)
    noise_bytes = len(burst) * per_thread * threads
    pms_host.until(lambda got: decoder.errors["garbage"] >= noise_bytes and decoder.frames >= 3)
    assert decoder.errors == {"bad_checksum": 0, "bad_length": 0, "garbage": noise_bytes}


def test_close_is_idempotent_and_stops_the_thread() -> None:
    sim = Sds011Sim(seed=5)
    sim.close()
    sim.close()
    assert not any(t.name.startswith("Sds011Sim:") and t.is_alive() for t in threading.enumerate())


# --- environments ---------------------------------------------------------------------------


def test_a_pollution_episode_rises_to_its_peak_and_decays_back() -> None:
    air = pollution_episode(baseline_pm2_5=5, baseline_pm10=10, peak_pm2_5=40, peak_pm10=60,
                            start_s=100, rise_s=10, decay_s=50)
    assert air(0) == air(99.9) == {"pm1_0": 3.5, "pm2_5": 5, "pm10": 10}
    assert air(105)["pm2_5"] == pytest.approx(25)
    assert air(110)["pm2_5"] == pytest.approx(45)
    assert air(160)["pm2_5"] == pytest.approx(5 + 40 / math.e)
    assert air(2000)["pm10"] == pytest.approx(10, abs=1e-6)


def test_presets_are_short_and_sharp_or_long_and_slow() -> None:
    truck, smoke = diesel_truck(start_s=0), wood_smoke_evening(start_s=0)
    assert truck(4)["pm2_5"] > 40
    assert truck(120)["pm2_5"] < truck(0)["pm2_5"] + 1
    assert smoke(600)["pm2_5"] < smoke(3600)["pm2_5"] > smoke(4 * 3600)["pm2_5"]
    assert steady(10, 15)(123) == {"pm1_0": 7.0, "pm2_5": 10, "pm10": 15}


def test_the_simulated_air_follows_the_environment_at_speed() -> None:
    with Sds011Sim(pollution_episode(start_s=0, rise_s=600, peak_pm2_5=600, decay_s=1e6),
                   seed=6, speed=600.0) as sim:  # 1 µg/m³ per simulated second
        host: Host[sds011.SdsMessage] = Host(sim.path, Sds011Decoder())
        try:
            query_mode(host)
            readings = []
            for _ in range(2):
                wait_simulated(sim, 120)
                host.send(sds011.query())
                readings.append((sim.elapsed_s, only(SdsReading, host.next_of(SdsReading))[0]))
            (t0, r0), (t1, r1) = readings
            assert r1.pm2_5 - r0.pm2_5 == pytest.approx(t1 - t0, abs=60)
        finally:
            host.port.close()
