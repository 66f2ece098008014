"""The battery-bay gate, one row per reason, and the charger relay's hysteresis."""

from __future__ import annotations

import pytest

from edge.battery_state import BatteryState, charger_should_run, readiness
from edge.config import BatteryConfig

CONFIG = BatteryConfig(id="bank-1", kind="jbd", url="loop://", compartment="B1",
                       min_soc_pct=80, min_temp_c=0, max_temp_c=45, absent_after_s=30)
GOOD = BatteryState(at=100.0, voltage_v=13.2, current_a=0.0, soc_pct=92,
                    temperatures_c=(21.0, 22.5))


@pytest.mark.parametrize(("state", "now", "problems"), [
    (GOOD, 101.0, []),
    (None, 101.0, ["no battery reading (absent, or its monitor is silent)"]),
    (GOOD, 131.0, ["no battery reading (absent, or its monitor is silent)"]),
    (BatteryState(at=100.0, soc_pct=None), 101.0, ["state of charge unknown"]),
    (BatteryState(at=100.0, soc_pct=42.4), 101.0, ["charge 42% below 80%"]),
    (BatteryState(at=100.0, soc_pct=90, temperatures_c=(20.0, 51.0)), 101.0,
     ["temperature 51.0 °C outside 0..45 °C"]),
    (BatteryState(at=100.0, soc_pct=90, temperatures_c=(-3.0,)), 101.0,
     ["temperature -3.0 °C outside 0..45 °C"]),
    (BatteryState(at=100.0, soc_pct=50, protection=frozenset({"cell_overvoltage",
                                                              "short_circuit"})), 101.0,
     ["charge 50% below 80%", "protection: cell_overvoltage, short_circuit"]),
])
def test_every_gating_reason(state: BatteryState | None, now: float,
                             problems: list[str]) -> None:
    assert readiness(state, CONFIG, now) == problems


def test_charger_relay_hysteresis() -> None:
    hot = BatteryState(at=0, temperatures_c=(46.0,))
    warm = BatteryState(at=0, temperatures_c=(42.0,))
    cool = BatteryState(at=0, temperatures_c=(39.0,))
    assert charger_should_run(cool, CONFIG, running=False)
    assert not charger_should_run(hot, CONFIG, running=True)
    assert not charger_should_run(warm, CONFIG, running=False)  # not cool enough to resume
    assert charger_should_run(warm, CONFIG, running=True)  # nor hot enough to stop
    assert not charger_should_run(None, CONFIG, running=True)
    assert not charger_should_run(BatteryState(at=0, temperatures_c=(20.0,),
                                               protection=frozenset({"x"})), CONFIG, True)
