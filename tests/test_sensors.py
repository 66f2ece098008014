"""Sensors end to end on ptys: sampling with the fan asleep in between, aggregates,
health events, and the maintainers' calibration producing device-signed records."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.access import AccessPolicy
from edge.calibration import CalibrationHistory
from edge.cli import main
from edge.clock import Reading, TimeQuality
from edge.config import CompartmentConfig, SensorConfig
from edge.device_key import DeviceKey
from edge.events import EventClass
from edge.maintenance import CalibrationRefused, Maintenance
from edge.sensors import SensorMonitor
from provisioning.badges import issue_badge
from provisioning.errors import TokenRejected
from provisioning.issuer import Issuer
from provisioning.records import RecordVerifier
from simulators.air_sensors import Pms5003Sim, Sds011Sim
from tests.test_agent import running

NOW = 1_800_000_000.0


class Clock:
    """Wall time under the test's control (the aggregates follow it)."""

    def __init__(self) -> None:
        self.ts = NOW

    def __call__(self) -> Reading:
        return Reading(self.ts, TimeQuality.SYNCHRONISED)


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any], EventClass]] = []
        self._news = asyncio.Event()

    async def record(self, kind: str, fields: dict[str, Any], cls: EventClass) -> None:
        self.items.append((kind, fields, cls))
        self._news.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for k, f, _ in self.items if k == kind]

    async def until(self, check: Any, wait_s: float = 10.0) -> None:
        async with asyncio.timeout(wait_s):
            while not check(self):
                self._news.clear()
                await self._news.wait()


def flat(value: float) -> Any:
    return lambda t: {"pm1_0": value * 0.6, "pm2_5": value, "pm10": value * 1.4}


@contextlib.asynccontextmanager
async def sampling(monitor: SensorMonitor) -> AsyncIterator[None]:
    task = asyncio.ensure_future(monitor.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def pms() -> Iterator[Pms5003Sim]:
    with Pms5003Sim(environment=flat(12.0), seed=1) as sim:
        yield sim


def monitor_for(sim: Any, tmp_path: Path, events: Events, clock: Clock, kind: str = "pms5003",
                **options: Any) -> SensorMonitor:
    config = SensorConfig(id="pm-1", kind=kind, url=sim.path, **{
        "interval_s": 1, "warmup_s": 0.2, "read_timeout_s": 1, "stuck_after": 50, **options})
    return SensorMonitor(config, clock=clock, record=events.record,
                         calibration=CalibrationHistory(tmp_path / "calibration.json"))


async def test_samples_with_the_fan_asleep_between_and_aggregates_per_window(
        pms: Pms5003Sim, tmp_path: Path) -> None:
    events, clock = Events(), Clock()
    monitor = monitor_for(pms, tmp_path, events, clock, aggregate_s=60)
    async with sampling(monitor):
        async with asyncio.timeout(10):
            while monitor.samples < 2:  # noqa: ASYNC110  # samples are counted, not evented
                await asyncio.sleep(0.05)
        assert pms.asleep  # put back to sleep after each sample
        clock.ts += 60  # the next sample closes the window
        await events.until(lambda e: e.of("sensor.minute"))
    [minute] = events.of("sensor.minute")
    assert minute["sensor"] == "pm-1"
    assert minute["minute"] == int(NOW)
    assert minute["metrics"]["pm2_5"]["mean"] == pytest.approx(12.0, abs=1)
    assert minute["metrics"]["pm2_5"]["count"] >= 2
    assert [c for k, _, c in events.items if k == "sensor.minute"] == [EventClass.TELEMETRY]
    assert len(monitor.recent) >= 3


@pytest.mark.parametrize("kind", ["pms5003", "sds011"])
async def test_both_sensors_are_read(kind: str, tmp_path: Path) -> None:
    sim_class: Any = Pms5003Sim if kind == "pms5003" else Sds011Sim
    with sim_class(environment=flat(30.0), seed=2) as sim:
        events, clock = Events(), Clock()
        monitor = monitor_for(sim, tmp_path, events, clock, kind=kind)
        async with sampling(monitor):
            async with asyncio.timeout(10):
                while monitor.latest is None:  # noqa: ASYNC110  # no event for a sample
                    await asyncio.sleep(0.05)
        assert monitor.latest["pm2_5"] == pytest.approx(30.0, abs=1)


async def test_health_stuck_stale_and_checksum_errors(pms: Pms5003Sim, tmp_path: Path) -> None:
    events, clock = Events(), Clock()
    monitor = monitor_for(pms, tmp_path, events, clock, duty_cycle=False, warmup_s=0,
                          stuck_after=3, stale_after_s=2.5, max_error_rate=0.3)

    def problem(name: str, state: str) -> Any:
        return lambda e: any(f["problem"] == name and f["state"] == state
                             for f in e.of("sensor.health"))

    async with sampling(monitor):
        pms.stuck(True)
        await events.until(problem("stuck", "started"))
        pms.stuck(False)
        pms.unplug()
        await events.until(problem("stale", "started"))
        pms.plug()
        await events.until(problem("stale", "cleared"))
        pms.bad_checksum_rate = 0.9
        await events.until(problem("checksum_errors", "started"), wait_s=30)
    started = [(f["problem"], c) for k, f, c in events.items
               if k == "sensor.health" and f["state"] == "started"]
    assert ("stuck", EventClass.ALARM) in started
    assert ("stale", EventClass.ALARM) in started


@pytest.fixture
def maintainer_badge(issuer: Issuer) -> str:
    return issue_badge(issuer.key, kid=issuer.kid, issuer=issuer.name, member="mia",
                       site="elm-street", now=int(time.time()), lifetime_s=3600,
                       permissions=("calibrate:pm-1",))


async def test_a_maintainer_calibrates_and_the_record_verifies(
        pms: Pms5003Sim, tmp_path: Path, issuer: Issuer, maintainer_badge: str) -> None:
    events = Events()
    clock = Clock()
    clock.ts = time.time()
    monitor = monitor_for(pms, tmp_path, events, clock, duty_cycle=False, warmup_s=0)
    key = DeviceKey.load_or_create(tmp_path / "device.key")
    policy = AccessPolicy("elm-street", (CompartmentConfig(id="A1", solenoid_pin=1,
                                                           door_pin=2),),
                          keys={issuer.kid: issuer.key.public_key()})
    maintenance = Maintenance(device="lockers-1", site="elm-street", key=key,
                              history=CalibrationHistory(tmp_path / "calibration.json"),
                              sensors={"pm-1": monitor}, policy=lambda: policy, clock=clock,
                              record=events.record)
    monitor._calibration = maintenance._history  # one history, as in the agent
    async with sampling(monitor):
        async with asyncio.timeout(10):
            while len(monitor.recent) < 5:  # noqa: ASYNC110  # no event for a sample
                await asyncio.sleep(0.05)
        # The sensor reads 12 in clean air at the reference station, which says 10.
        span = await maintenance.calibrate({"sensor": "pm-1", "method": "span",
                                            "reference": 10.0, "badge": maintainer_badge,
                                            "tolerance": 1.0})
        with pytest.raises(CalibrationRefused, match="not_granted"):
            await maintenance.calibrate({"sensor": "pm-1", "method": "zero",
                                         "badge": issue_badge(
                                             issuer.key, kid=issuer.kid, issuer=issuer.name,
                                             member="bo", site="elm-street",
                                             now=int(clock.ts), lifetime_s=3600,
                                             permissions=("calibrate:pm-9",))})
        async with asyncio.timeout(10):
            while monitor.latest is None or abs(monitor.latest["pm2_5"] - 10) > 0.5:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        rolled = await maintenance.calibrate({"sensor": "pm-1", "rollback": True,
                                              "badge": maintainer_badge})
    assert span["passed"] is True
    assert rolled["rolled_back"] is True
    record = RecordVerifier({key.kid: key.key.public_key()},
                            site="elm-street").verify_calibration(span["record"])
    assert (record.maintainer, record.sensor, record.passed) == ("mia", "pm-1", True)
    [event] = [f for k, f, c in events.items if k == "sensor.calibrated"]
    assert event["member"] == "mia"
    tampered = span["record"][:-6] + ("AAAAAA" if not span["record"].endswith("AAAAAA")
                                      else "BBBBBB")
    with pytest.raises(TokenRejected):
        RecordVerifier({key.kid: key.key.public_key()}, site="elm-street").verify_calibration(
            tampered)


async def test_curbside_status_and_calibrate_against_the_running_agent(
        tmp_path: Path, offline_site: Any, reader: Any) -> None:
    """The maintainer's path on site: the CLI, the control socket, the agent, the record."""

    site = offline_site
    with Pms5003Sim(environment=flat(12.0), seed=5) as sim:
        with site.config_path.open("a", encoding="utf-8") as fh:
            fh.write(f'\n[[sensors]]\nid = "pm-1"\nkind = "pms5003"\nurl = "{sim.path}"\n'
                     "interval_s = 1\nwarmup_s = 0\nduty_cycle = false\n")
        badge = tmp_path / "badge.jws"
        badge.write_text(site.badge("mia", permissions=("calibrate:pm-1",)))
        async with running(site) as h:
            monitor = h.agent.sensors["pm-1"]
            async with asyncio.timeout(15):
                while len(monitor.recent) < 5:  # noqa: ASYNC110  # no event for a sample
                    await asyncio.sleep(0.05)
            status = await asyncio.to_thread(main, ["status", "-c", str(site.config_path)])
            queue = await asyncio.to_thread(main, ["queue", "-c", str(site.config_path)])
            calibrated = await asyncio.to_thread(main, [
                "calibrate", "-c", str(site.config_path), "--sensor", "pm-1", "--method",
                "span", "--reference", "10", "--tolerance", "1", "--badge-file", str(badge)])
            refused = await asyncio.to_thread(main, [
                "calibrate", "-c", str(site.config_path), "--sensor", "pm-1", "--method",
                "zero", "--badge", site.badge("bo", groups=("hand-tools",))])
            await h.until(lambda ev: any(e.type == "sensor.calibrated" for e in ev))
    assert (status, queue, calibrated, refused) == (0, 0, 0, 1)
    [event] = [e for e in h.events if e.type == "sensor.calibrated"]
    key = h.agent.device_key
    record = RecordVerifier({key.kid: key.key.public_key()},
                            site="elm-street").verify_calibration(event.fields["record"])
    assert (record.maintainer, record.method, record.passed) == ("mia", "span", True)
    assert event.event_class is EventClass.AUDIT
