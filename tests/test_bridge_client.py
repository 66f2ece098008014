"""The bridge client against the MCU emulator on a real pty, through pyserial."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import serial

from firmware_bridge.bridge_client import (
    BridgeClient,
    BridgeDown,
    BridgeEvent,
    BridgeRefused,
    InputChanged,
    LinkDown,
    LinkUp,
    Status,
)
from firmware_bridge.bridge_codec import (
    Ack,
    Frame,
    FrameDecoder,
    Hello,
    Message,
    MessageType,
    Pulse,
    Role,
    decode_message,
    encode_message,
)
from simulators.mcu import McuEmulator


async def until(condition: Callable[[], bool], what: str, within_s: float = 3.0) -> None:
    """Wait for ``condition`` (checked every 5 ms); fail naming ``what`` after ``within_s``."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.005)


async def next_event(events: AsyncIterator[BridgeEvent], within_s: float = 3.0) -> BridgeEvent:
    async with asyncio.timeout(within_s):
        return await anext(events)


@pytest.fixture
def mcu() -> Iterator[McuEmulator]:
    with McuEmulator(seed=1) as emulator:
        yield emulator


@pytest.fixture
async def bridge(mcu: McuEmulator) -> AsyncIterator[BridgeClient]:
    async with BridgeClient(mcu.path) as client:
        await client.wait_link(3)
        yield client


async def test_the_link_comes_up_with_what_the_mcu_announced(mcu: McuEmulator) -> None:
    async with BridgeClient(mcu.path) as bridge:
        peer = await bridge.wait_link(3)
        assert (peer.boot_id, peer.outputs, peer.inputs, peer.max_on_ms) == (
            mcu.boot_id, 16, 16, 3000)
        assert peer.firmware == "curbside-mcu-emulator 1.0"
        assert await next_event(bridge.events()) == LinkUp(peer, restarted=False)
        assert bridge.link_up
        assert bridge.peer == peer
        await until(lambda: mcu.link_up, "the MCU's side of the link")


async def test_pulse_returns_the_granted_time_once_the_coil_is_on_and_the_mcu_ends_it(
    mcu: McuEmulator, bridge: BridgeClient
) -> None:
    assert await bridge.pulse(3, 200) == 200
    assert mcu.output(3)  # acknowledged means started
    await until(lambda: not mcu.output(3), "the MCU to end the pulse")
    on, off = mcu.output_log
    assert (on.output, on.on, off.output, off.on) == (3, True, 3, False)
    assert 0.19 <= off.at - on.at <= 0.26


async def test_a_pulse_longer_than_the_mcus_cap_is_capped_by_the_mcu() -> None:
    with McuEmulator(max_on_ms=300) as mcu:
        async with BridgeClient(mcu.path) as bridge:
            assert (await bridge.wait_link(3)).max_on_ms == 300
            assert await bridge.pulse(0, 5000) == 300
            await until(lambda: not mcu.output(0), "the capped pulse to end", within_s=1.0)
            on, off = mcu.output_log
            assert 0.29 <= off.at - on.at <= 0.36


async def test_one_coil_at_a_time_a_second_pulse_is_refused_busy(
    mcu: McuEmulator, bridge: BridgeClient
) -> None:
    await bridge.pulse(1, 500)
    with pytest.raises(BridgeRefused, match="output 1 is energised") as refused:
        await bridge.pulse(2, 100)
    assert refused.value.code is Status.BUSY
    assert not mcu.output(2)
    await until(lambda: not mcu.output(1), "the first pulse to end")
    assert await bridge.pulse(2, 20) == 20  # free again


async def test_refusals_name_the_reason(mcu: McuEmulator, bridge: BridgeClient) -> None:
    with pytest.raises(BridgeRefused, match="MCU has 16") as refused:
        await bridge.pulse(16, 10)
    assert refused.value.code is Status.BAD_OUTPUT
    mcu.stuck_output(5)
    with pytest.raises(BridgeRefused, match="output 5 reports a fault") as refused:
        await bridge.pulse(5, 100)
    assert refused.value.code is Status.OUTPUT_FAULT
    with pytest.raises(BridgeRefused) as refused:
        await bridge.set_output(5, True)
    assert refused.value.code is Status.OUTPUT_FAULT
    assert not any(change.output == 5 for change in mcu.output_log)
    with pytest.raises(ValueError, match="duration_ms"):
        await bridge.pulse(1, 0)


async def test_input_changes_arrive_in_order_debounced_and_read_inputs_agrees(
    mcu: McuEmulator, bridge: BridgeClient
) -> None:
    events = bridge.events()
    assert isinstance(await next_event(events), LinkUp)
    mcu.set_input(6, True)
    mcu.set_input(6, False)  # a glitch shorter than the debounce: never reported
    script = [(3, True), (7, True), (0, True), (12, True), (3, False), (12, False)]
    for batch in (script[:4], script[4:]):
        for index, level in batch:
            mcu.set_input(index, level)
            await asyncio.sleep(0.001)  # distinct edges, well inside the 20 ms debounce
        await until(lambda b=batch: all(mcu.input(i) == v for i, v in b),  # type: ignore[misc]
                    "the batch to be debounced")
    got = [await next_event(events) for _ in script]
    assert [(e.input, e.level) for e in got if isinstance(e, InputChanged)] == script
    stamps = [e.mcu_ms for e in got if isinstance(e, InputChanged)]
    assert stamps == sorted(stamps)
    levels = await bridge.read_inputs()
    assert len(levels) == 16
    assert [i for i, level in enumerate(levels) if level] == [0, 7]


async def test_held_outputs_survive_a_link_loss_but_a_running_pulse_does_not() -> None:
    # Link loss after 0.5 s of silence instead of 2 s, on both sides.
    with McuEmulator(heartbeat_s=0.1, link_timeout_s=0.5) as mcu:
        async with BridgeClient(mcu.path, heartbeat_s=0.1, link_timeout_s=0.5) as bridge:
            await bridge.wait_link(3)
            await bridge.set_output(9, True)
            await bridge.pulse(0, 3000)
            events = bridge.events()
            assert isinstance(await next_event(events), LinkUp)
            mcu.unplug()
            down = await next_event(events)
            assert isinstance(down, LinkDown)
            assert "no frame" in down.reason
            await until(lambda: not mcu.output(0), "the MCU to drop the pulse on link loss")
            assert mcu.output(9)
            on, off = [c for c in mcu.output_log if c.output == 0]
            assert off.at - on.at < 1.0  # the link timeout, not the 3 s pulse
            with pytest.raises(BridgeDown):
                await bridge.pulse(1, 10)
            mcu.plug()
            assert await next_event(events) == LinkUp(bridge.peer, restarted=False)  # type: ignore[arg-type]
            assert await bridge.pulse(1, 10) == 10


async def test_a_rebooted_mcu_is_reported_down_then_up_as_restarted(
    mcu: McuEmulator, bridge: BridgeClient
) -> None:
    events = bridge.events()
    first = await next_event(events)
    assert isinstance(first, LinkUp)
    await bridge.set_output(4, True)
    mcu.reboot()
    assert not mcu.output(4)  # all outputs off at boot
    assert await next_event(events) == LinkDown("the MCU restarted")
    up = await next_event(events)
    assert isinstance(up, LinkUp)
    assert up.restarted
    assert up.peer.boot_id == mcu.boot_id != first.peer.boot_id
    assert await bridge.pulse(2, 10) == 10


async def test_an_mcu_unplugged_rebooted_and_plugged_back_comes_up_restarted() -> None:
    with McuEmulator(heartbeat_s=0.1, link_timeout_s=0.5) as mcu:
        async with BridgeClient(mcu.path, heartbeat_s=0.1, link_timeout_s=0.5) as bridge:
            events = bridge.events()
            first = await next_event(events)
            assert isinstance(first, LinkUp)
            mcu.unplug()
            assert isinstance(await next_event(events), LinkDown)
            mcu.reboot()
            mcu.plug()
            up = await next_event(events)
            assert isinstance(up, LinkUp)
            assert up.restarted
            assert up.peer.boot_id == mcu.boot_id != first.peer.boot_id
            assert bridge.stats.link_downs == 1


async def test_commands_complete_exactly_once_over_a_lossy_corrupting_line() -> None:
    with McuEmulator(drop_rate=0.05, corrupt_rate=0.05, seed=7) as mcu:
        async with BridgeClient(mcu.path) as bridge:
            await bridge.wait_link(5)
            done, down = 0, 0
            for n in range(40):
                output = n % 16
                try:
                    assert await bridge.pulse(output, 5) == 5
                    done += 1
                except BridgeDown:
                    down += 1  # possible (all 4 sends lost); then it ran at most once
                    await bridge.wait_link(5)
                await until(lambda o=output: not mcu.output(o), "the pulse to end")  # type: ignore[misc]
            executed = mcu.commands_executed
            assert len(executed) == len(set(executed))  # never twice
            assert done <= len(executed) <= done + down
            assert done >= 36
            assert bridge.stats.retries + mcu.stats.retries > 0
            assert mcu.stats.duplicates + mcu.stats.duplicate_commands > 0 or (
                mcu.stats.frames_dropped == 0)
            assert sum(bridge.stats.errors.values()) > 0  # corrupted frames were seen


async def test_noise_on_the_line_is_counted_and_harms_nothing(
    mcu: McuEmulator, bridge: BridgeClient
) -> None:
    mcu.inject_noise(b"\x13\x37" * 100 + b"\x00" + b"\x05\x01\x00" + b"\x02\xff\x00")
    assert await bridge.pulse(2, 10) == 10
    await until(lambda: bridge.stats.errors.get("oversize", 0) == 1, "the noise to be counted")
    assert bridge.stats.errors.get("bad_cobs", 0) >= 1
    assert bridge.link_up


async def test_on_output_fires_on_the_emulators_thread_for_every_change(
    mcu: McuEmulator, bridge: BridgeClient
) -> None:
    seen: list[tuple[int, bool, str]] = []
    mcu.on_output = lambda index, on: seen.append((index, on, threading.current_thread().name))
    await bridge.pulse(7, 20)
    await until(lambda: len(seen) == 2, "the pulse on and off")
    assert [(i, on) for i, on, _ in seen] == [(7, True), (7, False)]
    assert all(name.startswith("mcu:") for _, _, name in seen)


async def test_wait_link_gives_up_when_nothing_answers() -> None:
    with McuEmulator() as mcu:
        mcu.unplug()
        async with BridgeClient(mcu.path) as bridge:
            with pytest.raises(BridgeDown, match=r"within 0\.3 s"):
                await bridge.wait_link(0.3)
            with pytest.raises(BridgeDown):
                await bridge.read_inputs()


async def test_after_exit_commands_fail_and_the_event_stream_ends(mcu: McuEmulator) -> None:
    async with BridgeClient(mcu.path) as bridge:
        await bridge.wait_link(3)
    with pytest.raises(BridgeDown):
        await bridge.pulse(0, 10)
    assert [e async for e in bridge.events()] == [LinkUp(bridge.peer, restarted=False)]  # type: ignore[arg-type]


async def test_opening_a_missing_port_raises_bridge_down() -> None:
    with pytest.raises(BridgeDown, match="cannot open"):
        async with BridgeClient("/dev/does-not-exist-bridge"):
            pass


# --- the MCU side, frame by frame -------------------------------------------------------


class RawHost:
    """A hand-driven host on the emulator's pty: sends frames, waits for answers."""

    def __init__(self, path: str) -> None:
        self.port = serial.serial_for_url(path, baudrate=115200, timeout=0.05)
        self.decoder = FrameDecoder()

    def send(self, message: Message, seq: int) -> None:
        self.port.write(encode_message(message, seq))

    def expect(self, wanted: Callable[[Message, int], bool], timeout: float = 2.0) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.decoder.feed(self.port.read(256)):
                if isinstance(frame, Frame):
                    message = decode_message(frame)
                    if wanted(message, frame.seq):
                        return message
        pytest.fail("timed out waiting for the MCU's answer")

    def ack_to(self, type_: MessageType, seq: int) -> Ack:
        message = self.expect(lambda m, s: isinstance(m, Ack) and m.acked_type == type_
                              and s == seq)
        assert isinstance(message, Ack)
        return message

    def close(self) -> None:
        self.port.close()


@pytest.fixture
def raw(mcu: McuEmulator) -> Iterator[RawHost]:
    host = RawHost(mcu.path)
    yield host
    host.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def test_before_the_hosts_hello_the_mcu_refuses_commands_not_ready(
    mcu: McuEmulator, raw: RawHost
) -> None:
    raw.send(Pulse(1, 0, 100), 0)
    assert raw.ack_to(MessageType.PULSE, 0).status is Status.NOT_READY
    assert not mcu.output_log


def test_the_mcu_executes_a_command_id_at_most_once_and_answers_a_seq_once(
    mcu: McuEmulator, raw: RawHost
) -> None:
    raw.send(Hello(Role.HOST, 0xABCD), 0)
    assert raw.ack_to(MessageType.HELLO, 0).status is Status.OK
    raw.send(Pulse(77, 2, 30), 1)
    first = raw.ack_to(MessageType.PULSE, 1)
    assert first == Ack(MessageType.PULSE, Status.OK, 77, 30)
    wait_for(lambda: not mcu.output(2), "the pulse to end")
    raw.send(Pulse(77, 2, 30), 1)  # our retry: same seq
    assert raw.ack_to(MessageType.PULSE, 1) == first
    raw.send(Pulse(77, 2, 30), 2)  # the same command under a new seq
    assert raw.ack_to(MessageType.PULSE, 2) == first
    assert mcu.commands_executed == [77]
    assert [c.on for c in mcu.output_log] == [True, False]
    assert (mcu.stats.duplicates, mcu.stats.duplicate_commands) == (1, 1)
    raw.send(Hello(Role.HOST, 0x1234), 3)  # a restarted host: command ids are forgotten
    raw.ack_to(MessageType.HELLO, 3)
    raw.send(Pulse(77, 2, 30), 4)
    assert raw.ack_to(MessageType.PULSE, 4) == first
    assert mcu.commands_executed == [77, 77]


async def test_a_port_that_goes_away_is_reopened_and_the_link_recovers(
    mcu: McuEmulator, bridge: BridgeClient
) -> None:
    events = bridge.events()
    assert isinstance(await next_event(events), LinkUp)
    port = bridge._port
    assert port is not None
    assert port._serial is not None
    port._serial.close()  # what a vanished USB adapter looks like to the reader thread
    down = await next_event(events)
    assert isinstance(down, LinkDown)
    assert down.reason.startswith("serial port lost")
    assert await next_event(events, within_s=5) == LinkUp(bridge.peer, restarted=False)  # type: ignore[arg-type]
    assert bridge.stats.port_reopens == 1
    assert await bridge.pulse(0, 10) == 10


async def test_a_paced_emulator_takes_at_least_the_wire_time_at_115200_baud() -> None:
    with McuEmulator(baudrate=115200) as mcu:
        async with BridgeClient(mcu.path) as bridge:
            await bridge.wait_link(3)
            rtts = []
            for _ in range(20):
                start = time.perf_counter()
                await bridge.read_inputs()
                rtts.append(time.perf_counter() - start)
    wire_s = (8 + 11) * 10 / 115200  # READ_INPUTS and INPUTS(16) with their delimiters
    assert min(rtts) >= wire_s
