"""The command line: issuer keys, badges, config check, and the demo end to end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.cli import main, parse_duration
from edge.errors import StorageError
from edge.link import GOODBYE_TIMEOUT_S
from edge.outbox import Outbox
from provisioning.badges import BadgeVerifier
from provisioning.keys import public_key_from_b64
from simulators import sim_cli
from simulators.broker import MosquittoBroker, free_port
from simulators.tcp_proxy import FaultyProxy

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "virtual-site.toml"


def test_issuer_init_then_badge_issue_makes_a_verifiable_badge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "issuer"
    assert main(["issuer", "init", str(directory), "--name", "coop", "--kid", "k-2026"]) == 0
    printed = capsys.readouterr().out
    assert '[[trust.issuers]]\nkid = "k-2026"' in printed
    assert stat.S_IMODE((directory / "issuer.key").stat().st_mode) == 0o600
    public_key = printed.split('public_key = "')[1].split('"')[0]

    assert main(["badge", "issue", "--issuer", str(directory), "--member", "ada", "--site",
                 "elm-street", "--compartment", "A1", "--skill", "battery-handling",
                 "--lifetime", "2h"]) == 0
    token = capsys.readouterr().out.strip()
    verifier = BadgeVerifier({"k-2026": public_key_from_b64(public_key)}, site="elm-street")
    badge = verifier.verify(token, now=time.time())
    assert (badge.member, badge.compartments, badge.skills) == ("ada", ("A1",),
                                                                {"battery-handling": 1})
    assert badge.expires_at - badge.not_before == 7200


def test_issuer_init_refuses_to_overwrite_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["issuer", "init", str(tmp_path / "i")]) == 0
    assert main(["issuer", "init", str(tmp_path / "i")]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_check_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(EXAMPLE)]) == 0
    assert "valid; device lockers-1 at site elm-street" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("15m", 900), ("7d", 604800)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_demo_plays_the_whole_scene_and_exits_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "demo", "--dir", str(tmp_path / "demo"),
         "--duration", "0.5", "--view", "off"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr + out
    for expected in (
        "access.granted  compartment=A1 reason=granted via=badge member=ada",
        "access.denied  compartment=A1 reason=bad_signature",
        "access.denied  compartment=A1 reason=expired",
        "access.denied  compartment=B1 reason=missing_badge member=ben",
        "access.granted  compartment=B1 reason=granted via=badge member=cleo",
        "link.down",
        "demo.scn: passed",
        "stopped cleanly: outputs off, outbox closed",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert "Traceback" not in result.stderr
    assert (tmp_path / "demo" / "agent.log").exists()


def test_demo_stops_on_ctrl_c_mid_scene_and_leaves_no_broker_behind(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "demo", "--dir", str(tmp_path / "demo"),
         "--view", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert demo.stdout is not None
    port = None
    try:
        for line in demo.stdout:  # read the live account until the first decision
            if "mosquitto on 127.0.0.1:" in line:
                port = int(line.split("127.0.0.1:")[1].split(";")[0])
            if "access.granted" in line:
                break
        demo.send_signal(signal.SIGINT)
        rest, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, err  # interrupted: the scene did not finish
    assert "stopped cleanly: outputs off" in rest
    assert "Traceback" not in err
    assert port is not None
    with pytest.raises(ConnectionRefusedError):  # the demo's broker is gone with it
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_demo_without_mosquitto_runs_offline_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sim_cli, "find_mosquitto", lambda: None)
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--view", "off"]) == 0
    text = capsys.readouterr().out
    assert "mosquitto is not installed, so the agent runs offline" in text
    assert "access.granted  compartment=A1" in text
    assert "reason=missing_badge" in text
    assert "Offline all along: every event waits in the outbox" in text
    assert "event(s) kept for the next start" in text


def test_run_stops_cleanly_on_sigterm(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = EXAMPLE.read_text(encoding="utf-8").replace("port = 1883", f"port = {broker.port}")
    path = tmp_path / "site.toml"
    path.write_text(config, encoding="utf-8")
    agent = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "-c", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert agent.stderr is not None
    try:
        for line in agent.stderr:  # the log, until the broker has us
            if "connected to broker" in line:
                break
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, err
    assert "stopping" in err
    assert "Traceback" not in err
    assert (tmp_path / "virtual-site.db").exists()


def test_a_failing_agent_task_exits_1_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async def fail(self: Agent, stop: object) -> None:
        raise ExceptionGroup("tasks", [StorageError("outbox.db: disk I/O error")])

    monkeypatch.setattr(Agent, "run", fail)
    config = tmp_path / "site.toml"  # its state files go beside it, not into examples/
    config.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["run", "-c", str(config)]) == 1
    assert "curbside: outbox.db: disk I/O error" in capsys.readouterr().err


async def test_audit_verify_reports_intact_and_broken_chains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path = tmp_path / "o.db"
    async with Outbox(db_path) as outbox:
        for i in range(3):
            await outbox.append("access.granted", {"n": i})
    assert main(["audit", "verify", "--db", str(db_path)]) == 0
    assert "audit chain intact: 3 event(s)" in capsys.readouterr().out
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("DELETE FROM events WHERE seq = 2")  # an event removed behind our back
        db.commit()
    assert main(["audit", "verify", "--db", str(db_path)]) == 1
    assert "BROKEN at seq 3" in capsys.readouterr().out


def test_sighup_reloads_a_valid_config_and_keeps_the_old_on_an_invalid_one(
        tmp_path: Path) -> None:
    # Offline (nothing listens on the port), so every event stays in the outbox to be read.
    config = EXAMPLE.read_text(encoding="utf-8").replace("port = 1883", f"port = {free_port()}")
    path = tmp_path / "site.toml"
    path.write_text(config, encoding="utf-8")
    agent = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "-c", str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert agent.stderr is not None

    def wait_for(text: str) -> None:
        assert agent.stderr is not None
        for line in agent.stderr:
            if text in line:
                return
        raise AssertionError(f"the agent ended before logging {text!r}")

    try:
        wait_for("unreachable (attempt 1)")  # the link task runs: the agent is up
        path.write_text(config.replace("[device]", "[device]\nbogus = 1"), encoding="utf-8")
        agent.send_signal(signal.SIGHUP)
        wait_for("configuration reload refused")
        path.write_text(config.replace("keepalive_s = 10", "keepalive_s = 20")
                        if "keepalive_s = 10" in config else config + "\n", encoding="utf-8")
        agent.send_signal(signal.SIGHUP)
        wait_for("configuration reloaded")
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, err
    with sqlite3.connect(tmp_path / "virtual-site.db") as db:
        types = [row[0] for row in db.execute("SELECT type FROM events ORDER BY seq")]
    assert "config.reload_refused" in types
    assert "config.reloaded" in types


async def test_sigterm_with_the_broker_black_holed_stops_in_bounded_time_and_closes_the_db(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    async with FaultyProxy(broker.port) as proxy:
        config = EXAMPLE.read_text(encoding="utf-8").replace("port = 1883",
                                                             f"port = {proxy.port}")
        path = tmp_path / "site.toml"
        path.write_text(config, encoding="utf-8")
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli", "--log-level", "INFO", "run", "-c", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert agent.stderr is not None
        log: list[str] = []
        try:
            async with asyncio.timeout(30):
                while "connected to broker" not in (line := (
                        await agent.stderr.readline()).decode()):
                    assert line, "".join(log)
                    log.append(line)
            proxy.stall()  # in-flight publishes and the goodbye can never be acknowledged
            agent.send_signal(signal.SIGTERM)
            started = time.monotonic()
            rest = await asyncio.wait_for(agent.stderr.read(), 30)
            code = await asyncio.wait_for(agent.wait(), 30)
            took = time.monotonic() - started
        finally:
            if agent.returncode is None:
                agent.kill()
                await agent.wait()
    err = rest.decode()
    assert code == 0, err
    assert took < GOODBYE_TIMEOUT_S + 5.0  # bounded: not the TCP timeout
    assert "broker goodbye incomplete" in err
    assert "Traceback" not in err
    db_path = tmp_path / "virtual-site.db"
    assert not Path(f"{db_path}-wal").exists() or Path(f"{db_path}-wal").stat().st_size == 0
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] >= 1
