"""Crash soak: SIGKILL a producing, draining device again and again; count what is lost.

The device is the real outbox, forwarder and link (``simulators.producer``). Baseline,
same run, same kills: a device keeping its queue in memory (paho's own queue). ``value``
is events lost by Curbside (must be 0); ``baseline`` is events lost by the in-memory one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from _report import report

from simulators.broker import MosquittoBroker
from simulators.platform import PlatformRecorder
from simulators.tcp_proxy import FaultyProxy

HERE = Path(__file__).resolve().parent


async def soak(cmd: list[str], kills: int, rng: random.Random, proxy: FaultyProxy,
               *, continue_from_output: bool = False) -> list[bytes]:
    """Start, let run, SIGKILL, ``kills`` times; every third run the network is a black
    hole (a stalled proxy), so events pile up on the device before it dies."""
    outputs = []
    for n in range(kills):
        if n % 3 == 2:
            proxy.stall()
        last = max((int(x) for o in outputs for x in o.split()), default=0)
        argv = [*cmd, str(last)] if continue_from_output else cmd
        device = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # noqa: ASYNC220  # Popen returns at once
        await asyncio.sleep(rng.uniform(0.3, 0.9))  # the kill moment
        device.kill()
        out, _ = await asyncio.to_thread(device.communicate)
        outputs.append(out)
        proxy.cut()
        proxy.resume()
    return outputs


async def run(directory: Path, broker: MosquittoBroker, kills: int) -> dict[str, int]:
    rng = random.Random(7)
    db = directory / "outbox.db"
    async with PlatformRecorder(broker.host, broker.port, "crash-site") as platform, \
            FaultyProxy(broker.port) as proxy:
        producer = [sys.executable, "-m", "simulators.producer", "--db", str(db), "--port",
                    str(proxy.port), "--rate", "400"]
        await soak(producer, kills, rng, proxy)
        drain = await asyncio.to_thread(
            subprocess.run, [*producer, "--drain-only"], timeout=120, check=True)
        del drain
        with contextlib.closing(sqlite3.connect(db)) as conn:
            committed = int(conn.execute("SELECT seq FROM sqlite_sequence").fetchone()[0])
        await platform.wait_for(lambda p: len(p.of_device("producer-1")) >= committed, 60)
        ours = {int(e["seq"]) for e in platform.of_device("producer-1")}
        naive_cmd = [sys.executable, str(HERE / "_naive_producer.py"), str(proxy.port)]
        outputs = await soak(naive_cmd, kills, rng, proxy, continue_from_output=True)
        accepted = {int(line) for out in outputs for line in out.split()}
        # Whatever the naive device got out reaches us now; the rest never will.
        with contextlib.suppress(TimeoutError):
            await platform.wait_for(lambda p: len(p.of_device("naive-1")) >= len(accepted), 3)
        naive = {int(e["seq"]) for e in platform.of_device("naive-1")}
    return {"committed": committed, "lost": len(set(range(1, committed + 1)) - ours),
            "duplicates": platform.duplicates, "naive_accepted": len(accepted),
            "naive_lost": len(accepted - naive)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 kills instead of 200")
    args = parser.parse_args()
    kills = 20 if args.quick else 200
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker(Path(tmp) / "broker") as broker:
        result = asyncio.run(run(Path(tmp), broker, kills))
    print(f"{'events committed':<28} {result['committed']:>12,}")
    print(f"{'duplicates (around kills)':<28} {result['duplicates']:>12,}")
    report("crash_soak_lost_events", result["lost"], "events", result["naive_lost"],
           "in-memory queue, same kills", kills=kills, **result)


if __name__ == "__main__":
    main()
