"""Particulate-sensor decoders: bytes per second parsed, against the sensors' line rate.

A long stream of valid frames from each sensor (concentrations drawn from a seeded
generator), with line noise after one frame in twenty and one frame in fifty sent with a
bad checksum, is fed to a fresh decoder in 64-byte chunks (what a serial read returns
at this rate) and, as a worst case, one byte at a time. Every valid frame must come out.
Baseline: the line rate of the sensors' UART, 9600 baud at 10 bits per byte = 960 bytes/s,
the most a sensor can ever send; ratio = throughput / line rate, the headroom the agent has.
The figure reported is the slower decoder at 64-byte chunks.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from _report import report

from firmware_bridge.pms5003 import Pms5003Decoder, PmsFrame
from firmware_bridge.sds011 import Sds011Decoder, SdsReading

LINE_RATE = 9600 / 10  # bytes per second
CHUNK = 64
NOISE = bytes(b for b in range(256) if b not in (0x42, 0xAA))  # cannot start a frame


class Decoder(Protocol):
    frames: int

    def feed(self, data: bytes) -> Sequence[object]: ...


def stream(frames: int, frame: Callable[[random.Random], bytes], checksum_at: int,
           seed: int) -> tuple[bytes, int]:
    """``frames`` frames with noise and damage mixed in; returns it and the valid count."""
    rng = random.Random(seed)  # test data, not cryptography
    out, valid = bytearray(), 0
    for n in range(frames):
        wire = bytearray(frame(rng))
        if n % 50 == 49:
            wire[checksum_at] ^= 0x01
        else:
            valid += 1
        out += wire
        if n % 20 == 19:
            out += bytes(rng.choice(NOISE) for _ in range(rng.randrange(1, 40)))
    return bytes(out), valid


def pms_frame(rng: random.Random) -> bytes:
    pm = [rng.randrange(0, 300) for _ in range(3)]
    counts = sorted((rng.randrange(0, 20000) for _ in range(6)), reverse=True)
    return PmsFrame(*[*pm, *pm, *counts, 0x9700]).to_bytes()


def sds_frame(rng: random.Random) -> bytes:
    return SdsReading(rng.randrange(0, 9999) / 10, rng.randrange(0, 9999) / 10,
                      0xA160).to_bytes()


def bytes_per_s(make: Callable[[], Decoder], data: bytes, valid: int, chunk: int,
                repeats: int) -> float:
    """Median over ``repeats`` runs of a fresh decoder fed ``data`` in ``chunk``-byte reads."""
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    rates = []
    for _ in range(repeats):
        decoder = make()
        start = time.perf_counter()
        for piece in pieces:
            decoder.feed(piece)
        rates.append(len(data) / (time.perf_counter() - start))
        assert decoder.frames == valid, (decoder.frames, valid)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the stream")
    quick = parser.parse_args().quick
    frames, repeats = (3000, 3) if quick else (30000, 5)

    pms_data, pms_valid = stream(frames, pms_frame, checksum_at=31, seed=1)
    sds_data, sds_valid = stream(frames * 3, sds_frame, checksum_at=8, seed=2)
    figures = {}
    for name, make, data, valid in (
            ("pms5003", Pms5003Decoder, pms_data, pms_valid),
            ("sds011", Sds011Decoder, sds_data, sds_valid)):
        for chunk in (CHUNK, 1):
            rate = bytes_per_s(make, data, valid, chunk, repeats if chunk > 1 else 1)
            key = f"{name}_bytes_per_s" if chunk > 1 else f"{name}_bytewise_bytes_per_s"
            figures[key] = rate
            print(f"{name + f' ({chunk}-byte reads)':<28} {rate:>12,.0f} bytes/s"
                  f"   ({rate / LINE_RATE:,.0f} x line rate)")
    slower = min(figures["pms5003_bytes_per_s"], figures["sds011_bytes_per_s"])
    report("parse_bytes_per_s", slower, "bytes/s", LINE_RATE, "9600 baud line rate",
           **{k: round(v) for k, v in figures.items()}, chunk_bytes=CHUNK,
           pms5003_stream_bytes=len(pms_data), sds011_stream_bytes=len(sds_data))


if __name__ == "__main__":
    main()
