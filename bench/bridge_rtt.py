"""Firmware-bridge round trip: a command written by BridgeClient -> its answer decoded.

The MCU emulator on a pty, paced like a UART at 115200 baud (a pty alone moves bytes at
once), answers READ_INPUTS with INPUTS and PULSE with an ACK. Baseline, computed in the
same run: the time the request and the reply bytes need on the wire at 115200 baud, 10
bits per byte; the floor no implementation can beat. The ratio (p50 / wire time) shows
what the host's asyncio loop, pyserial's reader thread and the emulator add on top. The
same measurement on an unpaced pty gives the software overhead alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _report import report

from firmware_bridge.bridge_client import BridgeClient
from firmware_bridge.bridge_codec import Ack, Inputs, MessageType, Pulse, ReadInputs, Status
from firmware_bridge.bridge_codec import encode_message as wire
from simulators.mcu import McuEmulator

BAUD = 115200
INPUTS = 16


def wire_ms(*frames: bytes) -> float:
    return sum(len(f) for f in frames) * 10 / BAUD * 1000


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


async def measure(samples: int, *, paced: bool) -> tuple[list[float], list[float]]:
    """RTTs in ms: READ_INPUTS -> INPUTS, and PULSE -> ACK (each pulse 1 ms, waited out)."""
    with McuEmulator(INPUTS, INPUTS, baudrate=BAUD if paced else None) as mcu:
        async with BridgeClient(mcu.path, baudrate=BAUD) as bridge:
            await bridge.wait_link(5)
            retries_before = bridge.stats.retries  # the HELLO exchange may resend
            reads, pulses = [], []
            for _ in range(samples):
                start = time.perf_counter()
                await bridge.read_inputs()
                reads.append((time.perf_counter() - start) * 1000)
            loop, ended = asyncio.get_running_loop(), asyncio.Event()

            def on_output(_output: int, on: bool) -> None:  # the emulator's thread
                if not on:
                    loop.call_soon_threadsafe(ended.set)

            mcu.on_output = on_output
            for n in range(max(50, samples // 10)):
                ended.clear()
                start = time.perf_counter()
                await bridge.pulse(n % INPUTS, 1)
                pulses.append((time.perf_counter() - start) * 1000)
                async with asyncio.timeout(1):  # one coil at a time: let it end
                    await ended.wait()
            retried = bridge.stats.retries - retries_before
            assert retried == 0, f"{retried} retries would distort the round trip"
    return reads, pulses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 round trips instead of 3,000")
    samples = 300 if parser.parse_args().quick else 3000

    read_wire = wire_ms(wire(ReadInputs(), 1), wire(Inputs((False,) * INPUTS), 1))
    pulse_wire = wire_ms(wire(Pulse(0x0100, 5, 500), 1),
                         wire(Ack(MessageType.PULSE, Status.OK, 0x0100, 500), 1))
    reads, pulses = asyncio.run(measure(samples, paced=True))
    raw_reads, _ = asyncio.run(measure(samples, paced=False))

    p50, p99 = statistics.median(reads), percentile(reads, 99)
    pulse_p50, pulse_p99 = statistics.median(pulses), percentile(pulses, 99)
    print(f"{'READ_INPUTS rtt p50 / p99':<28} {p50:>8.3f} / {p99:.3f} ms"
          f"   (wire {read_wire:.3f} ms)")
    print(f"{'PULSE rtt p50 / p99':<28} {pulse_p50:>8.3f} / {pulse_p99:.3f} ms"
          f"   (wire {pulse_wire:.3f} ms)")
    print(f"{'unpaced pty p50':<28} {statistics.median(raw_reads):>8.3f} ms"
          "   (software alone)")
    report("bridge_rtt_read_inputs_p50", p50 * 1000, "us", read_wire * 1000,
           "bytes on the wire at 115200", p99_us=round(p99 * 1000, 1),
           pulse_p50_us=round(pulse_p50 * 1000, 1), pulse_p99_us=round(pulse_p99 * 1000, 1),
           pulse_wire_us=round(pulse_wire * 1000, 1),
           unpaced_p50_us=round(statistics.median(raw_reads) * 1000, 1), samples=samples)

if __name__ == "__main__":
    main()
