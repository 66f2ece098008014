"""The devices of a simulated site: every device a site configuration names, built on the
far side of its interface, and the configuration rewritten to reach them.

Simulator layer, under :class:`~simulators.sim_site.SimSite` (which adds the agent and the
driver API). :class:`SimDevices` builds, for each thing the configuration names:

* the badge reader: a :class:`~simulators.badge_reader.PtyBadgeReader` on a pty;
* each curb sensor: a PMS5003 or SDS011 emulator on a pty, breathing :class:`Air` that
  the driver changes;
* each battery monitor: a VE.Direct shunt or JBD BMS emulator on a pty, over a
  :class:`~simulators.batteries.BatteryModel` the driver drains or heats;
* the locks: on GPIO, a :class:`~simulators.gpio_world.LockerWorld` on MockFactory pins
  with door physics and item presence; on the firmware bridge, the microcontroller
  emulator with the same physics on its inputs;
* on request, a private Mosquitto on loopback behind a :class:`FaultyProxy` (so the
  broker can be cut or stalled) and a platform recorder subscribed to the site; or no
  broker at all (``offline``: the agent queues every event).

The configuration is changed in memory only, and only where the simulation must: the
serial ports become ptys, GPIO becomes MockFactory, the state directory moves to the
simulation's directory, the broker becomes the private one (when asked), and a badge
issuer of the simulation is added to the trusted keys so the driver can present badges.
Everything else (compartments, timers, policy, sensors' settings) runs as configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path
from typing import Any

from edge.config import (
    BatteryConfig,
    BridgeHardware,
    IssuerKey,
    MockHardware,
    MqttConfig,
    SensorConfig,
    SiteConfig,
    TrustConfig,
)
from provisioning.issuer import Issuer, init_issuer, load_issuer
from simulators.air_sensors import Pms5003Sim, Sds011Sim
from simulators.badge_reader import PtyBadgeReader
from simulators.batteries import BatteryModel, JbdBmsSim, VeDirectSim
from simulators.broker import MosquittoBroker, free_port
from simulators.gpio_world import DoorSpec, LockerWorld, world_pin_factory
from simulators.mcu import McuEmulator
from simulators.platform_sim import PlatformSimulator
from simulators.sim_world import Air, McuDoors
from simulators.tcp_proxy import FaultyProxy

SIM_ISSUER_KID_NAME = "curbside-sim"
SIM_OPERATOR_NAME = "curbside-sim-operator"


class SimDevices:
    """The devices of one simulated site; see the module docstring.

    Each attribute is empty (or ``None``) until :meth:`_build_devices` has built that
    device; everything built is torn down by closing :attr:`_stack`.
    """

    def __init__(self, workdir: Path, *, own_broker: bool, offline: bool, seed: int) -> None:
        self.workdir = workdir
        self._own_broker = own_broker and not offline
        self._offline = offline
        self._rng = random.Random(seed)  # noqa: S311  # noise for fault injection
        self._stack = contextlib.AsyncExitStack()
        self.air: dict[str, Air] = {}
        self.sensors: dict[str, Pms5003Sim | Sds011Sim] = {}
        self.batteries: dict[str, BatteryModel] = {}
        self.battery_sims: dict[str, VeDirectSim | JbdBmsSim] = {}
        self.broker: MosquittoBroker | None = None
        self.proxy: FaultyProxy | None = None
        self.platform: PlatformSimulator | None = None
        self.mcu: McuEmulator | None = None
        self.world: LockerWorld | McuDoors | None = None
        self.issuer: Issuer | None = None
        self.operator: Issuer | None = None  # the platform's command key
        self._reader: PtyBadgeReader | None = None

    async def _build_devices(self, config: SiteConfig) -> tuple[SiteConfig, Any]:
        """Build every device ``config`` names; return ``config`` rewritten to reach them,
        and the pin factory the agent must use (``None`` on a firmware bridge site)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        trust = self._trust(config)
        floor = self.workdir / "time.floor"
        if not floor.exists():  # a site that has had NTP before, as a Pi between reboots
            floor.write_text(f"{time.time() - 60:.3f}\n", encoding="ascii")
        reader = self._reader = self._stack.enter_context(PtyBadgeReader())
        hardware, pin_factory = self._locks(config)
        if isinstance(self.world, McuDoors):
            await self.world.settled()  # the agent's first read must find the doors closed
        return config.model_copy(update={
            "trust": trust, "reader": config.reader.model_copy(update={"url": reader.path}),
            "sensors": self._sensors(config), "batteries": self._batteries(config),
            "hardware": hardware, "mqtt": await self._broker(config),
            "storage": config.storage.model_copy(
                update={"path": self.workdir / config.storage.path.name})}), pin_factory

    def _trust(self, config: SiteConfig) -> TrustConfig:
        """The configured trust, plus the simulation's badge issuer and command key."""
        self.issuer = _issuer(self.workdir / "issuer", SIM_ISSUER_KID_NAME)
        self.operator = _issuer(self.workdir / "operator", SIM_OPERATOR_NAME)
        return config.trust.model_copy(update={
            "issuers": (*config.trust.issuers, IssuerKey(
                kid=self.issuer.kid, public_key=self.issuer.public_key)),
            "command_keys": (*config.trust.command_keys, IssuerKey(
                kid=self.operator.kid, public_key=self.operator.public_key))})

    def _sensors(self, config: SiteConfig) -> tuple[SensorConfig, ...]:
        sensors = []
        for sensor in config.sensors:
            seed = self._rng.randrange(1 << 30)
            air = self.air[sensor.id] = Air(seed=seed)
            sim: Pms5003Sim | Sds011Sim = (Pms5003Sim(air, seed=seed) if sensor.kind == "pms5003"
                                           else Sds011Sim(air, seed=seed))
            self._stack.callback(sim.close)
            self.sensors[sensor.id] = sim
            sensors.append(sensor.model_copy(update={"url": sim.path}))
        return tuple(sensors)

    def _batteries(self, config: SiteConfig) -> tuple[BatteryConfig, ...]:
        batteries = []
        for battery in config.batteries:
            model = self.batteries[battery.id] = BatteryModel(soc_pct=95.0)
            sim: VeDirectSim | JbdBmsSim = (VeDirectSim(model) if battery.kind == "vedirect"
                                            else JbdBmsSim(model))
            self._stack.callback(sim.close)
            self.battery_sims[battery.id] = sim
            batteries.append(battery.model_copy(update={"url": sim.path}))
        return tuple(batteries)

    def _locks(self, config: SiteConfig) -> tuple[BridgeHardware | MockHardware, Any]:
        """The microcontroller emulator, or MockFactory pins; both with door physics."""
        loop = asyncio.get_running_loop()
        hardware = config.hardware
        if isinstance(hardware, BridgeHardware):
            self.mcu = McuEmulator(heartbeat_s=hardware.heartbeat_s,
                                   link_timeout_s=hardware.link_timeout_s).start()
            self._stack.callback(self.mcu.close)
            doors = McuDoors(self.mcu, {int(c.solenoid_pin): c.id for c in config.compartments},
                              {c.id: int(c.door_pin) for c in config.compartments}, loop)
            self._stack.push_async_callback(doors.aclose)
            self.world = doors
            return hardware.model_copy(update={"url": self.mcu.path}), None
        pin_factory = world_pin_factory()
        world = LockerWorld(pin_factory, [DoorSpec(c.id, c.solenoid_pin, c.door_pin, c.item_pin)
                                          for c in config.compartments], loop)
        self._stack.push_async_callback(world.aclose)
        self.world = world
        return MockHardware(backend="mock"), pin_factory

    async def _broker(self, config: SiteConfig) -> MqttConfig:
        mqtt = config.mqtt
        if self._offline:  # a port nothing listens on: every event waits in the outbox
            return mqtt.model_copy(update={"host": "127.0.0.1", "port": free_port(),
                                           "tls": None, "allow_insecure": True})
        if not self._own_broker:
            return mqtt
        self.broker = MosquittoBroker(self.workdir / "broker")
        self.broker.start()
        self._stack.callback(self.broker.stop)
        self.proxy = await self._stack.enter_async_context(FaultyProxy(self.broker.port))
        self.platform = await self._stack.enter_async_context(PlatformSimulator(
            self.broker.host, self.broker.port, config.device.site, issuer=self.issuer,
            command_key=self.operator))
        return mqtt.model_copy(update={"host": self.proxy.host, "port": self.proxy.port,
                                       "tls": None, "allow_insecure": True})


def _issuer(directory: Path, name: str) -> Issuer:
    """The simulation's key in ``directory``: made once, reused with the directory."""
    return load_issuer(directory) if directory.exists() else init_issuer(directory, name=name)
