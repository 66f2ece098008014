"""A whole site in simulation: every device of a site configuration on the far side of its
interface, and the real agent, unchanged, in the middle.

Simulator layer. ``SimSite`` builds the devices with :class:`~simulators.sim_build.SimDevices`
(which also says how the configuration is rewritten for them), runs the agent against them,
and is the driver API (also behind the scenario files of :mod:`simulators.scenario`)::

    async with SimSite(load_config(path), workdir) as site:
        await site.wait_link_up()
        site.present("A1", "ada", groups=("hand-tools",))
        await site.expect("door.closed", compartment="A1")
        site.cut_broker(); ...; site.restore_broker()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from edge.agent import Agent
from edge.config import SiteConfig
from edge.events import StoredEvent
from provisioning.badges import issue_badge
from simulators.badge_reader import PtyBadgeReader
from simulators.gpio_world import LockerWorld, Member
from simulators.mcu import McuEmulator
from simulators.platform_sim import PlatformSimulator
from simulators.sim_build import SimDevices
from simulators.sim_world import McuDoors
from simulators.tcp_proxy import FaultyProxy

log = logging.getLogger(__name__)


class SimError(RuntimeError):
    """The driver asked for something this site does not have (the message says what)."""


class SimSite(SimDevices):
    """A running simulated site; see the module docstring."""

    def __init__(self, config: SiteConfig, workdir: Path, *, own_broker: bool = True,
                 offline: bool = False,
                 observer: Callable[[StoredEvent], None] | None = None,
                 seed: int = 0) -> None:
        super().__init__(workdir, own_broker=own_broker, offline=offline, seed=seed)
        self._original = config
        self._observer = observer
        self._clock_offset_s = 0.0
        self.events: list[StoredEvent] = []  # every event the agent recorded, in order
        self.notes: list[str] = []  # what the driver did, in order
        self._news = asyncio.Event()
        self.agent: Agent | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.config = config

    # --- bring-up -------------------------------------------------------------------------

    async def __aenter__(self) -> SimSite:
        try:
            await self._build()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stack.aclose()

    async def _build(self) -> None:
        self.config, pin_factory = await self._build_devices(self._original)
        self.agent = Agent(self.config, pin_factory=pin_factory, observer=self._observe,
                           wall_clock=self._wall)
        self._task = asyncio.ensure_future(self.agent.run(self._stop))
        self._task.add_done_callback(lambda _task: self._news.set())  # wake the waiters
        self._stack.push_async_callback(self._stop_agent)
        await asyncio.wait_for(self.agent.running.wait(), 15.0)

    async def _stop_agent(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30.0)

    def _wall(self) -> float:
        return time.time() - self._clock_offset_s

    def _observe(self, event: StoredEvent) -> None:
        self.events.append(event)
        self._news.set()
        if self._observer is not None:
            self._observer(event)

    def _note(self, text: str) -> None:
        self.notes.append(text)
        del self.notes[:-50]
        log.info("sim: %s", text)

    @property
    def running_agent(self) -> Agent:
        """The agent; :class:`SimError` with its reason if it has stopped."""
        if self.agent is None or self._task is None:
            raise SimError("the site is not running")
        if self._task.done() and not self._stop.is_set():
            reason = ("it was cancelled" if self._task.cancelled() else
                      repr(self._task.exception()) if self._task.exception() else "it returned")
            raise SimError(f"the agent stopped: {reason}")
        return self.agent

    @property
    def reader(self) -> PtyBadgeReader:
        if self._reader is None:
            raise SimError("the site is not running")
        return self._reader

    @property
    def site(self) -> str:
        return self.config.device.site

    @property
    def device(self) -> str:
        return self.config.device.id

    # --- members and doors ------------------------------------------------------------------

    def badge(self, member: str, **claims: Any) -> str:
        """A badge for ``member`` signed by the simulation's issuer; ``claims`` as
        :func:`provisioning.badges.issue_badge` takes them (groups, skills, lifetime_s...)."""
        assert self.issuer is not None
        claims.setdefault("lifetime_s", 3600)
        # The issuer's clock is the platform's, right even while the device's is not.
        return issue_badge(self.issuer.key, kid=self.issuer.kid, issuer=self.issuer.name,
                           member=member, site=self.site, now=int(time.time()), **claims)

    def present(self, compartment: str, member: str = "", *, token: str | None = None,
                **claims: Any) -> None:
        """Hold a badge to the reader for ``compartment``: ``token`` as given, or one
        issued here for ``member`` with ``claims``."""
        self._compartment(compartment)
        self.reader.present(compartment, token if token is not None else self.badge(
            member, **claims))
        self._note(f"badge presented at {compartment}" + (f" by {member}" if member else ""))

    def _compartment(self, compartment: str) -> str:
        if compartment not in {c.id for c in self.config.compartments}:
            known = ", ".join(c.id for c in self.config.compartments)
            raise SimError(f"no compartment {compartment!r} (this site has {known})")
        return compartment

    def _doors(self) -> LockerWorld | McuDoors:
        if self.world is None:
            raise SimError("the site is not running")
        return self.world

    def open_door(self, compartment: str) -> None:
        """Pull the door open (forced, if it was locked)."""
        self._doors().open_door(self._compartment(compartment))
        self._note(f"door {compartment} pulled open")

    def close_door(self, compartment: str) -> None:
        self._doors().close_door(self._compartment(compartment))
        self._note(f"door {compartment} closed")

    def leave_open(self, compartment: str) -> None:
        """The next member to unlock ``compartment`` opens it and walks away."""
        self._doors().once[self._compartment(compartment)] = Member(close_after_s=None)
        self._note(f"the next member at {compartment} will leave the door open")

    def walk_away(self, compartment: str) -> None:
        """The next unlock of ``compartment`` is not followed by anyone opening the door."""
        self._doors().once[self._compartment(compartment)] = None
        self._note(f"nobody will open {compartment} at its next unlock")

    def take_item(self, compartment: str) -> None:
        self._item(compartment, present=False)

    def return_item(self, compartment: str) -> None:
        self._item(compartment, present=True)

    def _item(self, compartment: str, *, present: bool) -> None:
        world = self._doors()
        if not isinstance(world, LockerWorld):
            raise SimError("item presence is simulated on GPIO sites only")
        world.set_item(self._compartment(compartment), present)
        self._note(f"item {'returned to' if present else 'taken from'} {compartment}")

    # --- air and batteries --------------------------------------------------------------------

    def set_air(self, sensor: str, *, pm2_5: float | None = None,
                pm10: float | None = None) -> None:
        if sensor not in self.air:
            raise SimError(f"no sensor {sensor!r} (this site has {', '.join(self.air) or 'none'})")
        self.air[sensor].set(pm2_5=pm2_5, pm10=pm10)
        self._note(f"air at {sensor}: pm2.5={pm2_5} pm10={pm10}")

    def battery(self, battery: str, *, soc_pct: float | None = None,
                temperature_c: float | None = None, current_a: float | None = None) -> None:
        """Drain (``soc_pct``), heat (``temperature_c``) or load a battery bank."""
        if battery not in self.batteries:
            raise SimError(f"no battery {battery!r} "
                           f"(this site has {', '.join(self.batteries) or 'none'})")
        model = self.batteries[battery]
        if soc_pct is not None:
            model.soc_pct = soc_pct
        if temperature_c is not None:
            model.temperature_c = temperature_c
        if current_a is not None:
            model.current_a = current_a
        self._note(f"battery {battery}: soc={soc_pct} temp={temperature_c} current={current_a}")

    # --- the platform ---------------------------------------------------------------------------

    def _platform(self) -> PlatformSimulator:
        if self.platform is None:
            raise SimError("the platform needs the simulation's own broker")
        return self.platform

    async def command(self, name: str, args: Mapping[str, Any] | None = None,
                      timeout_s: float = 10.0) -> dict[str, Any]:
        """The platform sends this device a signed command; return its reply."""
        self._note(f"platform command {name} {dict(args or {})}")
        return await self._platform().send_command(self.device, name, dict(args or {}),
                                                   timeout_s=timeout_s)

    async def revoke(self, *members: str) -> None:
        """The platform publishes a signed denylist revoking ``members``."""
        await self._platform().publish_denylist(members=members)
        self._note(f"platform revoked {', '.join(members)}")

    # --- faults -------------------------------------------------------------------------------

    def _proxy(self) -> FaultyProxy:
        if self.proxy is None:
            raise SimError("the broker is not the simulation's own (run with a broker)")
        return self.proxy

    def cut_broker(self) -> None:
        """Drop every connection and refuse new ones until :meth:`restore_broker`."""
        proxy = self._proxy()
        proxy.refuse()
        proxy.cut()
        self._note("broker cut")

    def stall_broker(self) -> None:
        """Keep connections open but move no bytes until :meth:`restore_broker`."""
        self._proxy().stall()
        self._note("broker stalled")

    def restore_broker(self) -> None:
        proxy = self._proxy()
        proxy.admit()
        proxy.resume()
        self._note("broker restored")

    def restart_broker(self) -> None:
        """Stop and start the broker process (its retained messages persist)."""
        if self.broker is None:
            raise SimError("the broker is not the simulation's own")
        self.broker.stop()
        self.broker.start()
        self._note("broker restarted")

    def _mcu(self) -> McuEmulator:
        if self.mcu is None:
            raise SimError("this site has no microcontroller (hardware.backend is not bridge)")
        return self.mcu

    def reboot_mcu(self) -> None:
        """The microcontroller restarts: outputs off, a new boot id, inputs read afresh."""
        self._mcu().reboot()
        self._note("microcontroller rebooted")

    def unplug_mcu(self) -> None:
        """The serial cable comes out: silence both ways until :meth:`plug_mcu`."""
        self._mcu().unplug()
        self._note("microcontroller unplugged")

    def plug_mcu(self) -> None:
        self._mcu().plug()
        self._note("microcontroller plugged back in")

    def noise(self, target: str, size: int = 64) -> None:
        """Inject ``size`` random bytes on a serial line: ``reader``, ``mcu``, or a sensor's or
        battery's id."""
        data = self._rng.randbytes(size)
        if target == "reader":
            self.reader.send_raw(data)
        elif target == "mcu" and self.mcu is not None:
            self.mcu.inject_noise(data)
        elif target in self.sensors:
            self.sensors[target].noise(data)
        elif target in self.battery_sims:
            self.battery_sims[target].noise(data)
        else:
            lines = ["reader", *(["mcu"] if self.mcu else []), *self.sensors, *self.battery_sims]
            raise SimError(f"no serial line {target!r} (this site has {', '.join(lines)})")
        self._note(f"{size} bytes of noise on {target}")

    def clock_back(self, seconds: float) -> None:
        """Set the device's wall clock back (a lost RTC, a bad NTP answer)."""
        self._clock_offset_s += seconds
        self._note(f"wall clock set back {seconds:g} s")

    def clock_reset(self) -> None:
        self._clock_offset_s = 0.0
        self._note("wall clock correct again")

    # --- waiting --------------------------------------------------------------------------------

    async def wait_link_up(self, timeout_s: float = 15.0) -> None:
        await asyncio.wait_for(self.running_agent.link.wait_up(), timeout_s)

    async def until(self, check: Callable[[list[StoredEvent]], bool],
                    timeout_s: float = 15.0) -> None:
        """Return once ``check(events)`` holds; TimeoutError otherwise (SimError if the
        agent stops meanwhile)."""
        async with asyncio.timeout(timeout_s):
            while not check(self.events):
                self.running_agent  # noqa: B018  # raises if the agent has stopped
                self._news.clear()
                await self._news.wait()

    async def snapshot(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The agent's state snapshot (what ``curbside status`` shows)."""
        return await asyncio.wait_for(self.running_agent.snapshot(), timeout_s)
