"""A battery bank as the agent knows it, and whether its bay may open for a loan. Pure.

:func:`readiness` is the gate: a battery bay opens for a loan only with a battery present
and freshly read, charged to at least ``min_soc_pct``, every temperature within
``[min_temp_c, max_temp_c]`` and no protection flag raised. Otherwise the member is
refused with ``battery_not_ready`` and the list of what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.config import BatteryConfig


@dataclass(frozen=True)
class BatteryState:
    """The latest reading of one battery's monitor (SI units; None when not reported)."""

    at: float  # monotonic time of the reading
    voltage_v: float | None = None
    current_a: float | None = None  # positive: charging
    soc_pct: float | None = None
    temperatures_c: tuple[float, ...] = ()
    cell_min_v: float | None = None
    cell_max_v: float | None = None
    protection: frozenset[str] = field(default_factory=frozenset)
    cycles: int | None = None

    def fields(self) -> dict[str, Any]:
        """The reading as event fields."""
        out: dict[str, Any] = {"voltage_v": self.voltage_v, "current_a": self.current_a,
                               "soc_pct": self.soc_pct,
                               "temperatures_c": list(self.temperatures_c),
                               "cell_min_v": self.cell_min_v, "cell_max_v": self.cell_max_v,
                               "protection": sorted(self.protection), "cycles": self.cycles}
        return {k: v for k, v in out.items() if v is not None}


def readiness(state: BatteryState | None, config: BatteryConfig, now: float) -> list[str]:
    """What keeps the battery from a loan now; empty when it may go."""
    if state is None or now - state.at > config.absent_after_s:
        return ["no battery reading (absent, or its monitor is silent)"]
    problems = []
    if state.soc_pct is None:
        problems.append("state of charge unknown")
    elif state.soc_pct < config.min_soc_pct:
        problems.append(f"charge {state.soc_pct:.0f}% below {config.min_soc_pct:.0f}%")
    for t in state.temperatures_c:
        if not config.min_temp_c <= t <= config.max_temp_c:
            problems.append(f"temperature {t:.1f} °C outside {config.min_temp_c:g}.."
                            f"{config.max_temp_c:g} °C")
    if state.protection:
        problems.append("protection: " + ", ".join(sorted(state.protection)))
    return problems


def charger_should_run(state: BatteryState | None, config: BatteryConfig,
                       running: bool) -> bool:
    """The charger relay with hysteresis: off above ``charge_max_temp_c``, on again below
    ``charge_resume_temp_c``; off when the battery is unknown or protecting itself."""
    if state is None or state.protection or not state.temperatures_c:
        return False
    hottest = max(state.temperatures_c)
    if hottest >= config.charge_max_temp_c:
        return False
    return running or hottest <= config.charge_resume_temp_c
