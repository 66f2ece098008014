"""Every benchmark runs (``--quick``) and ends with its one-line JSON report, so a change
that breaks a benchmark is caught here, not when the figures are next needed. The
figures themselves are not judged: speed is measured by the benchmarks, not by tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def test_every_benchmark_runs_and_reports_json() -> None:
    assert {p.stem for p in SCRIPTS} >= {"verify", "unlock_latency", "bridge_rtt", "outbox"}
    running = {p.stem: subprocess.Popen(  # all at once: the wall time is the slowest one
        [sys.executable, str(p), "--quick"], cwd=BENCH.parent, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for p in SCRIPTS}
    failures = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        if process.returncode != 0:
            failures[name] = err[-2000:]
            continue
        report = json.loads(out.strip().splitlines()[-1])
        missing = {"bench", "value", "unit", "baseline", "ratio"} - set(report)
        if missing:
            failures[name] = f"last line lacks {sorted(missing)}: {report}"
    assert failures == {}
