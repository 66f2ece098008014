"""The composition root: builds every part from the configuration and runs them.

One ``asyncio.TaskGroup`` with named tasks: ``link`` (broker connection), ``forwarder``
(outbox to broker), ``reader`` (badge scans to decisions to unlocks), ``doors`` (door
sensor changes to events), ``commands`` (signed platform commands) and ``documents``
(denylists and trust bundles from the site topics). The access path, from a scan to a
durable decision to an unlock (write-ahead audit), is :mod:`edge.access_flow`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpiozero import DigitalOutputDevice

from edge import __version__, remote_commands
from edge.access_flow import AccessFlow
from edge.battery_bays import BatteryBays
from edge.calibration import CalibrationHistory
from edge.clock import Reading, TrustedClock
from edge.commands import Commands
from edge.compartment import Emit
from edge.config import BridgeHardware, SiteConfig, load_config
from edge.control import ControlError, ControlServer
from edge.denylist import DenylistStore
from edge.device_key import DeviceKey
from edge.errors import ConfigError
from edge.forwarder import Forwarder
from edge.gpio import build_pin_factory
from edge.gpio_backend import GpioBackend
from edge.health import HealthWatch
from edge.link import LinkDown, LinkState, MqttLink, PublishRejected
from edge.locker_backend import LockerBackend
from edge.lockers import LockerBank
from edge.maintenance import CalibrationRefused, Maintenance
from edge.outbox import EventClass, Outbox, StoredEvent
from edge.remote_config import RemoteConfigStore
from edge.replay import ReplayCache
from edge.sdnotify import Notifier
from edge.sensors import SensorMonitor
from edge.site_documents import SiteDocuments
from edge.topics import DeviceTopics
from edge.trust import TrustStore
from edge.uses import UseLedger
from provisioning.commands import CommandVerifier

log = logging.getLogger(__name__)

EventObserver = Callable[[StoredEvent], None]
STATE_MIN_INTERVAL_S = 1.0


class _StopRequested(Exception):
    """Raised inside the task group to end it when the stop event is set."""


class Agent:
    """The Curbside agent for one site configuration.

    ``pin_factory`` overrides the configured one (the simulators pass the MockFactory
    whose pins they drive); ``observer`` is called with every event once it is durable.
    """

    def __init__(
        self,
        config: SiteConfig,
        *,
        pin_factory: Any = None,
        observer: EventObserver | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        state_dir = config.storage.path.parent
        self.remote_config = RemoteConfigStore(state_dir / "remote-config.json")
        config = self.remote_config.apply_to(config)
        self.config = config
        self.boot_id = uuid.uuid4().hex[:12]
        self.topics = DeviceTopics(config.device.site, config.device.id)
        self.clock = TrustedClock(config.storage.path.with_name("time.floor"), wall=wall_clock)
        self.outbox = Outbox(config.storage.path, max_bytes=config.storage.max_bytes,
                             clock=self.clock.now)
        self.link = MqttLink(
            config.mqtt, self.topics, boot_id=self.boot_id, on_state=self._on_link_state,
            subscriptions=(self.topics.cmd, self.topics.denylist, self.topics.trust),
            on_message=self._on_message, on_connected=self.publish_state,
        )
        self.trust = TrustStore(state_dir / "trust.jws", config.trust, site=config.device.site)
        self.denylist = DenylistStore(state_dir / "denylist.jws", self.trust.issuer_keys,
                                      site=config.device.site)
        self.uses = UseLedger(state_dir / "uses.db")
        self._command_verifier: tuple[object, CommandVerifier | None] = (None, None)
        self.commands = Commands(
            self.link, self.topics, boot_id=self.boot_id, verifier=self.command_verifier,
            replay=ReplayCache(state_dir / "commands.seen"),
            clock=self.clock.now,
            record=lambda kind, fields: self.record(kind, fields, EventClass.AUDIT))
        remote_commands.register(self.commands, self)
        self.forwarder = Forwarder(self.outbox, self.link, self.topics)
        self._state_changed = asyncio.Event()
        self.documents = SiteDocuments(self.trust, self.denylist, self.record,
                                       self._state_changed.set)
        self._pin_factory = pin_factory
        self._observer = observer
        self._lockers: LockerBank | None = None
        self._locker_events: asyncio.Queue[tuple[Emit, Reading]] = asyncio.Queue()
        self._link_changes: asyncio.Queue[tuple[LinkState, str, Reading]] = asyncio.Queue()
        self.device_key = DeviceKey.load_or_create(state_dir / "device.key")
        self.calibration = CalibrationHistory(state_dir / "calibration.json")
        self.sensors = {s.id: SensorMonitor(s, clock=self.clock.now, record=self.record,
                                            calibration=self.calibration)
                        for s in config.sensors}
        self.bays = BatteryBays(config.batteries, key=self.device_key, device=config.device.id,
                                site=config.device.site, clock=self.clock.now,
                                record=self.record)
        self.access = AccessFlow(config, trust=self.trust, denylist=self.denylist,
                                 uses=self.uses, bays=self.bays, clock=self.clock.now,
                                 record=self.record, settle=self._locker_events.join)
        self.stats = self.access.stats
        self.reader_ready = self.access.reader_ready  # set while the badge reader is open
        self.maintenance = Maintenance(
            device=config.device.id, site=config.device.site, key=self.device_key,
            history=self.calibration, sensors=self.sensors, policy=lambda: self.access.policy,
            clock=self.clock.now, record=self.record)
        self.control = ControlServer(state_dir / "control.sock", {
            "status": self._control_status, "queue": self._control_queue,
            "calibrate": self._control_calibrate})
        self.health = HealthWatch(Notifier(), {
            "outbox": self.outbox.stuck,
            "lockers": lambda: None if self._lockers is None else self._lockers.stuck()})
        self.running = asyncio.Event()  # set once started: doors read, tasks starting

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; outputs are off and the database closed on return."""
        hardware = self.config.hardware
        if isinstance(hardware, BridgeHardware):
            from edge.bridge_backend import BridgeBackend  # noqa: PLC0415  # only when chosen

            await self._run(BridgeBackend(self.config.compartments, hardware), stop)
            return
        owned = self._pin_factory is None  # a factory we build is ours to close
        pin_factory = build_pin_factory(hardware) if owned else self._pin_factory
        relays = []
        try:
            for monitor in self.bays.monitors.values():
                if monitor.config.charger_pin is not None:
                    relay = DigitalOutputDevice(monitor.config.charger_pin, initial_value=False,
                                                pin_factory=pin_factory)
                    relays.append(relay)
                    monitor.attach_charger(relay)
            await self._run(GpioBackend(self.config.compartments, pin_factory), stop)
        finally:
            for relay in relays:  # off: no charging without the agent watching
                relay.off()
                relay.close()
            if owned:
                pin_factory.close()

    async def _run(self, backend: LockerBackend, stop: asyncio.Event) -> None:
        async with self.outbox:
            self._lockers = LockerBank(self.config.compartments, backend, self._locker_event)
            try:
                await self._start(self._lockers)
                try:
                    async with asyncio.TaskGroup() as tg:
                        critical = {
                            "link": tg.create_task(self.link.run(), name="link"),
                            "forwarder": tg.create_task(self.forwarder.run(),
                                                        name="forwarder"),
                            "reader": tg.create_task(self.access.read_badges(self._lockers),
                                                     name="reader"),
                            "lockers": tg.create_task(self._record_lockers(),
                                                      name="lockers"),
                        }
                        tg.create_task(self._record_link(), name="link-events")
                        critical["commands"] = tg.create_task(self.commands.run(),
                                                              name="commands")
                        for name, task in critical.items():
                            self.health.watch(name, task)
                        tg.create_task(self.health.run(), name="health")
                        tg.create_task(self._republish_state(), name="state")
                        tg.create_task(self.documents.run(), name="documents")
                        tg.create_task(self.control.run(), name="control")
                        for sid, sensor in self.sensors.items():
                            tg.create_task(sensor.run(), name=f"sensor:{sid}")
                        for bid, battery in self.bays.monitors.items():
                            tg.create_task(battery.run(), name=f"battery:{bid}")
                        tg.create_task(_raise_when_set(stop), name="stop")
                except* _StopRequested:
                    log.info("stopping")
            finally:
                await self._lockers.close()
                self.uses.close()
                self.clock.save()
                self.running.clear()
                self.reader_ready.clear()

    async def _start(self, lockers: LockerBank) -> None:
        """Reconcile the lockers (no alarm before every door has been read), then go."""
        boot = await lockers.start()
        await self.documents.report_stored_problems()
        await self.record(
            "agent.started",
            {"boot_id": self.boot_id, "version": __version__},
            EventClass.STATE,
        )
        await self.record("lockers.boot_state", {"backend": lockers.backend.name,
                                                  "compartments": boot}, EventClass.STATE)
        self.running.set()

    async def record(
        self, event_type: str, fields: dict[str, Any], event_class: EventClass,
        at: Reading | None = None,
    ) -> StoredEvent:
        stored = await self.outbox.append(event_type, fields, event_class=event_class, at=at)
        if self._observer is not None:
            self._observer(stored)
        return stored

    def command_verifier(self) -> CommandVerifier | None:
        """The verifier for the command keys in force (None: no command keys)."""
        ring = self.trust.command_keys()
        if self._command_verifier[0] is not ring:
            verifier = CommandVerifier(ring, device=self.config.device.id,
                                       leeway_s=self.config.trust.leeway_s) if ring else None
            self._command_verifier = (ring, verifier)
        return self._command_verifier[1]

    async def _control_status(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"state": await self.snapshot()}

    async def _control_queue(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"outbox": (await self.snapshot())["outbox"], "link": self.link.state.value}

    async def _control_calibrate(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.maintenance.calibrate(request)
        except CalibrationRefused as exc:
            raise ControlError(str(exc)) from exc

    def _locker_event(self, emit: Emit) -> None:
        """From the locker bank, on the loop: record it (in order) with the time it
        happened."""
        self._locker_events.put_nowait((emit, self.clock.now()))
        self._state_changed.set()

    @property
    def lockers(self) -> LockerBank | None:
        """The locker bank while the agent runs."""
        return self._lockers

    def apply_config(self, config: SiteConfig) -> None:
        """A validated configuration (remote items changed): in force from now on."""
        self.config = config
        self.access.reconfigure(config)
        self._command_verifier = (None, None)  # rebuilt with the new leeway
        if self._lockers is not None:
            for compartment in config.compartments:
                self._lockers.set_pulse(compartment.id, compartment.pulse_ms / 1000)
        self._state_changed.set()

    async def reload(self, path: Path) -> None:
        """SIGHUP: read the configuration file again. An invalid one changes nothing and
        raises ``config.reload_refused``; a valid one applies what can change while
        running (the policy: access, clock leeway, compartments' pulse, skills and group,
        with the remote items still on top) and ``config.reloaded`` names the sections
        that only a restart applies."""
        try:
            fresh = self.remote_config.apply_to(load_config(path))
        except ConfigError as exc:
            log.error("configuration reload refused, the running one stays:\n%s", exc)
            await self.record("config.reload_refused", {"error": str(exc)[:1000]},
                              EventClass.ALARM)
            return
        live = self._live_part(fresh)
        restart = sorted(k for k, v in fresh.model_dump(mode="json").items()
                         if v != live.model_dump(mode="json")[k])
        self.apply_config(live)
        log.info("configuration reloaded%s", f"; restart to apply {restart}" if restart else "")
        await self.record("config.reloaded", {"restart_needed": restart}, EventClass.AUDIT)

    def _live_part(self, fresh: SiteConfig) -> SiteConfig:
        """The running configuration with what can change live taken from ``fresh``."""
        current = self.config
        live_compartments = []
        fresh_by_id = {c.id: c for c in fresh.compartments}
        for c in current.compartments:
            f = fresh_by_id.get(c.id)
            live_compartments.append(c if f is None else c.model_copy(update={
                "pulse_ms": f.pulse_ms, "skills": f.skills, "group": f.group}))
        return current.model_copy(update={
            "access": fresh.access,
            "trust": current.trust.model_copy(update={"leeway_s": fresh.trust.leeway_s}),
            "compartments": tuple(live_compartments)})

    def _on_message(self, message: Any) -> None:
        kind = {self.topics.denylist: "denylist", self.topics.trust: "trust"}.get(message.topic)
        if kind is None:
            self.commands.on_message(message)
        else:
            self.documents.offer(kind, bytes(message.payload))

    async def snapshot(self) -> dict[str, Any]:
        """The retained ``state`` document: what the platform should know right now."""
        doors = self._lockers.door_states() if self._lockers is not None else {}
        stats = await self.outbox.stats()
        reading = self.clock.now()
        now = reading.ts
        return {
            "device": self.topics.device, "site": self.topics.site, "boot_id": self.boot_id,
            "version": __version__, "ts": round(now, 3), "tq": reading.quality.value,
            "doors": {cid: "closed" if closed else "open" for cid, closed in doors.items()},
            "compartments": self._lockers.states() if self._lockers is not None else {},
            "hardware_link": self._lockers.backend.link_up if self._lockers is not None
            else False,
            "outbox": {"depth": stats.total_depth, "by_class": stats.depth,
                       "bytes_by_class": stats.bytes, "wal_bytes": stats.wal_bytes,
                       "oldest_age_s": None if stats.oldest_ts is None
                       else round(max(0.0, now - stats.oldest_ts), 1),
                       "dropped": stats.dropped, "held_in_memory": stats.held_in_memory,
                       "fault": stats.fault},
            "sensors": {sid: m.status() for sid, m in self.sensors.items()},
            "batteries": {bid: m.status() for bid, m in self.bays.monitors.items()},
            "device_key": {"kid": self.device_key.kid,
                           "public_key": self.device_key.public_key_b64},
            "denylist_version": self.denylist.version,
            "trust_version": self.trust.version,
            "remote_config": self.remote_config.items,
            "stats": {"scans": self.stats.scans, "unlocks": self.stats.unlocks,
                      "garbage_lines": self.stats.garbage_lines},
        }

    async def publish_state(self) -> None:
        """Publish the retained snapshot (on every connection, and after changes)."""
        body = json.dumps(await self.snapshot(), separators=(",", ":")).encode()
        await self.link.publish(self.topics.state, body, qos=1, retain=True)

    async def _republish_state(self) -> None:
        """After door changes, refresh the retained snapshot, at most once a second."""
        while True:
            await self._state_changed.wait()
            await asyncio.sleep(STATE_MIN_INTERVAL_S)  # coalesce a burst of changes
            self._state_changed.clear()
            if self.link.state is LinkState.UP:
                with contextlib.suppress(LinkDown, PublishRejected):
                    await self.publish_state()

    async def _record_lockers(self) -> None:
        while True:
            emit, at = await self._locker_events.get()
            event_class = EventClass.ALARM if emit.alarm else \
                EventClass.AUDIT if emit.audit else EventClass.STATE
            try:
                await self.record(emit.type, emit.fields, event_class, at)
            finally:
                self._locker_events.task_done()

    def _on_link_state(self, state: LinkState, detail: str) -> None:
        self._link_changes.put_nowait((state, detail, self.clock.now()))

    async def _record_link(self) -> None:
        """Record link.up on connect and link.down when an up link is lost (not every retry)."""
        was_up = False
        while True:
            state, detail, at = await self._link_changes.get()
            is_up = state is LinkState.UP
            if is_up != was_up and state not in (LinkState.CONNECTING, LinkState.CLOSED):
                fields = {"detail": detail} if detail else {}
                await self.record(f"link.{state.value}", fields, EventClass.STATE, at)
                was_up = is_up


async def _raise_when_set(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _StopRequested
