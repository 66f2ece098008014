"""The agent as a systemd service: READY and WATCHDOG over NOTIFY_SOCKET, pings that stop
when a critical loop is stuck, and the unit file (verify, and its exposure score)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.config import load_config
from edge.events import EventClass
from simulators.badge_reader import PtyBadgeReader
from simulators.gpio_world import LockerWorld, world_pin_factory
from simulators.site import DOORS, VirtualSite
from tests.test_agent import has, running

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "curbside.service"


class ServiceManager:
    """The far side of NOTIFY_SOCKET: collects what the agent tells systemd."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def until(self, check: str, wait_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(wait_s):
            while not any(check in m for m in self.messages):
                self.messages.append((await loop.sock_recv(self.sock, 4096)).decode())

    async def drain(self, for_s: float) -> list[str]:
        """Everything said during ``for_s`` seconds (a window of silence is the point)."""
        loop = asyncio.get_running_loop()
        said: list[str] = []
        deadline = loop.time() + for_s
        while (left := deadline - loop.time()) > 0:
            try:
                said.append((await asyncio.wait_for(loop.sock_recv(self.sock, 4096),
                                                    left)).decode())
            except TimeoutError:
                break
        self.messages += said
        return said


async def test_ready_watchdog_pings_and_silence_when_the_outbox_is_stuck(
        offline_site: VirtualSite, reader: PtyBadgeReader, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = ServiceManager(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # pings every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    factory = world_pin_factory()
    world = LockerWorld(factory, DOORS, asyncio.get_running_loop())
    agent = Agent(load_config(offline_site.config_path), pin_factory=factory)
    agent.health._checks["outbox"] = lambda: agent.outbox.stuck(after_s=0.3)
    stop = asyncio.Event()
    run = asyncio.ensure_future(agent.run(stop))
    release = asyncio.Event()
    try:
        await manager.until("READY=1")
        await manager.until("WATCHDOG=1")

        async def stuck_commit(events: object) -> None:  # a disk that stopped answering
            await release.wait()

        monkeypatch.setattr(agent.outbox, "_commit", stuck_commit)
        poke = asyncio.ensure_future(agent.record("test.poke", {}, EventClass.STATE))
        await manager.until("STATUS=outbox")
        assert not any("WATCHDOG=1" in m for m in await manager.drain(0.5))
        release.set()
        monkeypatch.undo()
        await asyncio.wait_for(poke, 10)
        stop.set()
        await asyncio.wait_for(run, 10)
        await manager.until("STOPPING=1")
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(run, 10)
        await world.aclose()
        manager.sock.close()


def _unit_for_test(tmp_path: Path) -> Path:
    """The shipped unit, its ExecStart pointed at a program that exists here."""
    text = UNIT.read_text(encoding="utf-8").replace("/opt/curbside/.venv/bin/curbside",
                                                    shutil.which("true") or "/bin/true")
    path = tmp_path / "curbside.service"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: the README's test command installs it"
    result = subprocess.run([analyze, "verify", str(_unit_for_test(tmp_path))],
                            capture_output=True, text=True, timeout=60, check=False)
    problems = [line for line in result.stderr.splitlines()
                if "curbside.service" in line and "Failed to" not in line.split(":")[0]]
    assert result.returncode == 0, result.stderr
    assert problems == [], problems


def test_the_units_exposure_score_is_at_most_2_5(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager",
                             str(_unit_for_test(tmp_path))],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5, result.stdout


async def test_reload_applies_the_policy_live_and_names_what_needs_a_restart(
        offline_site: VirtualSite, reader: PtyBadgeReader) -> None:
    site = offline_site
    text = site.config_path.read_text(encoding="utf-8")
    async with running(site) as h:
        site.config_path.write_text(
            text.replace("keepalive_s = 10", "keepalive_s = 20")
            + "\n[access]\nlockout_s = 33\n", encoding="utf-8")
        await h.agent.reload(site.config_path)
        await h.until(has("config.reloaded"))
    [event] = [e for e in h.events if e.type == "config.reloaded"]
    assert event.fields["restart_needed"] == ["mqtt"]
    assert h.agent.config.access.lockout_s == 33
    assert h.agent.config.mqtt.keepalive_s == 10  # the link is not rebuilt while running
