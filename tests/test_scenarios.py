"""Scenario files: the parser (sans-I/O, hypothesis), and every built-in scenario played
against its site with a real Mosquitto, the real agent and every device emulated. Each
fault injector causes the failure it names and the agent recovers as documented (the
scenarios' own ``expect`` and ``check`` lines say so); here we also check what reached the
broker: every event, in order per class."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.config import load_config
from simulators.scenario import (
    Scenario,
    ScenarioError,
    ScenarioFailed,
    duration,
    load,
    parse,
    parse_line,
)
from simulators.scenario_player import Player
from simulators.sim_cli import SCENARIOS, SITES
from simulators.sim_site import SimSite

BRIDGE_SCENARIOS = {"bridge"}


def site_for(name: str) -> Path:
    return SITES / ("oak-road.toml" if name in BRIDGE_SCENARIOS else "elm-street.toml")


@pytest.mark.parametrize("name", sorted(
    p.stem for p in SCENARIOS.glob("*.scn") if p.stem != "offline"))
async def test_every_built_in_scenario_passes_and_the_broker_has_every_event(
        name: str, tmp_path: Path) -> None:
    async with SimSite(load_config(site_for(name)), tmp_path / "site") as site:
        await Player(site, say=lambda _text: None).play(load(SCENARIOS / f"{name}.scn"))
        assert site.platform is not None
        recorded = {e.seq for e in site.events if e.durable}
        await site.platform.wait_for(
            lambda p: recorded <= {int(e["seq"]) for e in p.events}, 30.0)
        platform = site.platform
        assert platform.in_order_per_class()
        assert platform.malformed == 0, platform.malformed_reasons
        assert platform.conflicting_duplicates == []
        assert platform.gaps(from_seq=1) == {site.device: []} or all(
            not gaps for gaps in platform.gaps(from_seq=1).values())
        assert all(chain.ok for chain in platform.audit_chain().values())


@pytest.mark.parametrize("site_file", ["elm-street.toml", "oak-road.toml"])
async def test_every_door_starts_closed_and_reads_as_the_world_moves_it(
        site_file: str, tmp_path: Path) -> None:
    """The world and the agent agree on what a closed door is, on GPIO and behind the
    bridge (whose levels are semantic: 1 = closed, docs/firmware-bridge.md)."""
    async with SimSite(load_config(SITES / site_file), tmp_path / "site",
                       offline=True) as site:
        assert set((await site.snapshot())["doors"].values()) == {"closed"}
        assert not [e for e in site.events if e.type.startswith("door.")]
        site.open_door("A1")  # nobody badged: forced
        await site.until(lambda events: any(e.type == "door.forced_open" for e in events), 5)
        site.close_door("A1")
        await site.until(lambda events: any(e.type == "door.closed" for e in events), 5)
        assert (await site.snapshot())["doors"]["A1"] == "closed"


async def test_the_offline_scenario_queues_every_event(tmp_path: Path) -> None:
    async with SimSite(load_config(SITES / "elm-street.toml"), tmp_path / "site",
                       offline=True) as site:
        await Player(site, say=lambda _t: None).play(load(SCENARIOS / "offline.scn"))
        assert site.platform is None
        assert site.running_agent.outbox.depth >= len([e for e in site.events if e.durable])


async def test_an_expectation_that_does_not_come_true_fails_naming_the_line(
        tmp_path: Path) -> None:
    scenario = parse("badge A1 ada group=batteries\n"
                     "expect access.granted compartment=A1 within=2s\n", "wrong.scn")
    async with SimSite(load_config(SITES / "elm-street.toml"), tmp_path / "site") as site:
        with pytest.raises(ScenarioFailed, match=r"wrong\.scn:2: .*no access\.granted") as err:
            await Player(site, say=lambda _t: None).play(scenario)
    assert "access.denied" in str(err.value)  # what did happen instead


async def test_a_step_the_site_cannot_do_is_an_error_naming_the_line(tmp_path: Path) -> None:
    async with SimSite(load_config(SITES / "elm-street.toml"), tmp_path / "site") as site:
        with pytest.raises(ScenarioError, match=r"x\.scn:1: .*no compartment 'Z9'"):
            await Player(site, say=lambda _t: None).play(parse("open Z9\n", "x.scn"))
        with pytest.raises(ScenarioError, match=r"x\.scn:1: .*no microcontroller"):
            await Player(site, say=lambda _t: None).play(parse("mcu reboot\n", "x.scn"))


@pytest.mark.parametrize(("line", "verb", "args", "options"), [
    ("badge A1 ada group=hand-tools skill=x:2 uses=1  # a comment", "badge", ("A1", "ada"),
     {"group": ("hand-tools",), "skill": ("x:2",), "uses": ("1",)}),
    ("check compartments.A1 == fault within=5s", "check", ("compartments.A1", "==", "fault"),
     {"within": ("5s",)}),
    ("expect local door.closed compartment=A1", "expect", ("local", "door.closed"),
     {"compartment": ("A1",)}),
    ("say Ada's turn # not said", "say", ("Ada's turn",), {}),
    ("wait link up", "wait", ("link", "up"), {}),
])
def test_lines_parse_into_steps(line: str, verb: str, args: tuple[str, ...],
                                options: dict[str, tuple[str, ...]]) -> None:
    step = parse_line(line)
    assert step is not None
    assert (step.verb, step.args, dict(step.options)) == (verb, args, options)


@pytest.mark.parametrize(("text", "message"), [
    ("dance A1", "unknown step 'dance'"),
    ("badge A1", "badge: usage"),
    ("badge A1 ada teleport", "unknown flag"),
    ("badge A1 ada skill=:2", "skill=':2'"),
    ("air pm-1 pm2_5=lots", "pm2_5='lots': expected a number"),
    ("broker explode", "broker: usage"),
    ("clock back soon", "expected a duration"),
    ("check a.b ~ 3", "check: usage"),
    ("wait link sideways", "wait: usage"),
    ("expect local", "which event type"),
    ('say "fine"\nbadge "A1', "No closing quotation"),
])
def test_bad_lines_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=r"s\.scn:\d+: ") as err:
        parse(text, "s.scn")
    assert message in str(err.value)


def test_every_built_in_scenario_parses() -> None:
    for path in SCENARIOS.glob("*.scn"):
        assert load(path).steps, path


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_with_a_scenario_error(text: str) -> None:
    outcome: object
    try:
        outcome = parse(text, "fuzz.scn")
    except ScenarioError as exc:
        outcome = exc
    if isinstance(outcome, ScenarioError):
        assert str(outcome).startswith("fuzz.scn:")
    else:
        assert isinstance(outcome, Scenario)
        assert all(step.verb for step in outcome.steps)


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.sampled_from(
    ["", "s", "ms", "m", "h"]))
def test_durations_scale_by_their_unit(value: float, unit: str) -> None:
    text = f"{value:.3f}{unit}"
    scale = {"": 1, "s": 1, "ms": 0.001, "m": 60, "h": 3600}[unit]
    assert duration(text) == pytest.approx(float(f"{value:.3f}") * scale)
