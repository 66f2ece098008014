"""Shared output of the benchmarks: aligned lines, then one JSON object as the last line."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable


def per_second(fn: Callable[[], object], *, seconds: float, batch: int = 50) -> float:
    """Calls of ``fn`` per second, median of five timed slices of ``seconds / 5`` each."""
    rates = []
    for _ in range(5):
        count, start = 0, time.perf_counter()
        deadline = start + seconds / 5
        while time.perf_counter() < deadline:
            for _ in range(batch):
                fn()
            count += batch
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def report(bench: str, value: float, unit: str, baseline: float, baseline_name: str,
           **extra: object) -> None:
    ratio = value / baseline if baseline else 0.0
    print(f"{bench:<28} {value:>12,.1f} {unit}")
    print(f"{'baseline: ' + baseline_name:<28} {baseline:>12,.1f} {unit}")
    print(f"{'ratio':<28} {ratio:>12.3f}")
    print(json.dumps({"bench": bench, "value": round(value, 1), "unit": unit,
                      "baseline": round(baseline, 1), "ratio": round(ratio, 3), **extra}))
