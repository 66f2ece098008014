"""``curbside sim``: a scenario file from the command line, its failure, the live view's
plain mode, and the prompt driven line by line."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.cli import main
from edge.config import load_config
from simulators.scenario_player import Player
from simulators.sim_cli import SITES, Run
from simulators.sim_site import SimSite


def test_a_scenario_file_passes_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "visit.scn"
    scenario.write_text("wait link up\nbadge A1 ada group=hand-tools\n"
                        "expect door.closed compartment=A1\nexpect delivered\n")
    assert main(["sim", "-s", str(scenario), "--dir", str(tmp_path / "run"),
                 "--view", "off"]) == 0
    out = capsys.readouterr().out
    assert "visit.scn: passed" in out
    assert "door.closed  compartment=A1" in out
    assert (tmp_path / "run" / "agent.log").read_text()


def test_a_failing_expectation_exits_1_naming_the_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "wrong.scn"
    scenario.write_text("badge A1 ben group=batteries\n"
                        "expect local access.granted compartment=A1 within=2s\n")
    assert main(["sim", "-s", str(scenario), "--dir", str(tmp_path / "run"),
                 "--view", "off"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "wrong.scn:2: expect local access.granted" in out
    assert "access.denied" in out  # what happened instead


def test_a_bad_scenario_is_refused_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "bad.scn"
    scenario.write_text("badge A1\n")
    assert main(["sim", "-s", str(scenario), "--view", "off"]) == 2
    assert "bad.scn:1: badge: usage" in capsys.readouterr().err


def test_the_plain_view_prints_a_summary_line_as_the_site_changes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "-s", "reader", "--dir", str(tmp_path / "run"),
                 "--view", "plain", "--duration", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "link up |" in out
    assert "doors A1" in out


async def lines(*texts: str) -> AsyncIterator[str]:
    for text in texts:
        yield text


async def test_the_prompt_runs_steps_shows_errors_and_keeps_going(tmp_path: Path) -> None:
    out = io.StringIO()
    run = Run(config_path=SITES / "elm-street.toml", directory=tmp_path / "run", out=out,
              view="off", own_broker=True)
    async with SimSite(load_config(SITES / "elm-street.toml"), tmp_path / "run",
                       observer=run.event) as site:
        player = Player(site, say=run.line)
        code = await run.prompt(player, lines(
            "help", "wait link up", "badge A1 ada group=hand-tools",
            "expect door.closed compartment=A1", "dance", "open Z9", "status", "events 2",
            "quit", "badge A1 never-read"), asyncio.Event())
    text = out.getvalue()
    assert code == 0
    assert "broker cut|stall|restore|restart" in text  # help
    assert "access.granted  compartment=A1" in text
    assert "error: unknown step 'dance'" in text
    assert "error: no compartment 'Z9'" in text
    assert "link up |" in text  # status
    assert "never-read" not in text  # nothing after quit
