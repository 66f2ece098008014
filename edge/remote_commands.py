"""The signed platform commands the agent executes: open, audit, set_time, set_config,
calibrate, refresh_state (docs/mqtt-api.md). :class:`edge.commands.Commands` has verified each one
(signature, device, expiry, unreplayed) before a handler here runs; every handler
records what it did as an audit event naming the operator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge.commands import CommandError, Commands, Context
from edge.config import SiteConfig
from edge.events import EventClass
from edge.maintenance import CalibrationRefused
from edge.reasons import Reason
from edge.remote_config import RemoteConfigError, apply_items

if TYPE_CHECKING:
    from edge.agent import Agent


def register(commands: Commands, agent: Agent) -> None:
    """Register every signed command of ``agent``."""
    handlers = RemoteCommands(agent)
    commands.register("open", handlers.open)
    commands.register("audit", handlers.audit)
    commands.register("set_time", handlers.set_time)
    commands.register("set_config", handlers.set_config)
    commands.register("refresh_state", handlers.refresh_state)
    commands.register("calibrate", handlers.calibrate)


class RemoteCommands:
    """The handlers, over the agent's public surface."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    async def open(self, args: dict[str, Any], context: Context) -> dict[str, Any]:
        """Unlock a compartment for the operator, recorded like a scan (audit first)."""
        agent = self._agent
        compartment = args.get("compartment")
        lockers = agent.lockers
        if lockers is None or compartment not in {c.id for c in agent.config.compartments}:
            raise CommandError(f"unknown compartment {compartment!r}")
        by = {"via": "remote", "operator": context.operator}
        await agent.record("access.granted", {"compartment": compartment,
                                              "reason": Reason.GRANTED.value, **by},
                           EventClass.AUDIT)
        pulse_ms = await agent.access.unlock(lockers, str(compartment), by)
        if pulse_ms is None:
            raise CommandError(f"the lock of {compartment} was not operated (see the "
                               "locker.unlock_failed event)")
        return {"compartment": compartment, "pulse_ms": pulse_ms}

    async def audit(self, args: dict[str, Any], context: Context) -> dict[str, Any]:
        """Audit mode for the operator; replies once every door has been operated."""
        lockers = self._agent.lockers
        if lockers is None:
            raise CommandError("the locker bank is not running")
        opened = await self._agent.access.audit_mode(lockers, {"operator": context.operator})
        return {"opened": opened}

    async def set_config(self, args: dict[str, Any], context: Context) -> dict[str, Any]:
        """Change remote items (edge.remote_config): validated, persisted, applied at
        once, and recorded with the values before and after."""
        agent = self._agent
        items = args.get("items")
        if not isinstance(items, dict) or not items:
            raise CommandError('expected args {"items": {"access.lockout_s": 60, ...}}')
        try:
            config = apply_items(agent.config, items)
        except RemoteConfigError as exc:
            raise CommandError(f"invalid configuration item: {exc}") from exc
        before = {name: _item(agent.config, name) for name in items}
        try:
            agent.remote_config.save(items)
        except OSError as exc:  # applied but not kept would silently revert at restart
            raise CommandError(f"{Reason.STORAGE_FAULT}: cannot save the items: {exc}") from exc
        agent.apply_config(config)
        after = {name: _item(config, name) for name in items}
        await agent.record("config.changed", {"operator": context.operator, "before": before,
                                              "after": after}, EventClass.AUDIT)
        return {"applied": after}

    async def set_time(self, args: dict[str, Any], context: Context) -> dict[str, Any]:
        """The command's own signed ``iat`` moves the time floor (never back)."""
        clock = self._agent.clock
        assert context.issued_at is not None  # signed commands always carry it
        if not clock.platform_time(float(context.issued_at)):
            raise CommandError(f"{Reason.STALE_TIME}: signed time {context.issued_at} is "
                               f"behind the time floor {clock.floor:.0f}")
        reading = clock.now()
        await self._agent.record("time.set", {"signed_time": context.issued_at,
                                              "operator": context.operator}, EventClass.AUDIT)
        return {"floor": clock.floor, "quality": reading.quality.value}

    async def calibrate(self, args: dict[str, Any], context: Context) -> dict[str, Any]:
        """A calibration from the platform (co-location against a reference station):
        the signed command is the authority, the operator is named in the record."""
        try:
            return await self._agent.maintenance.calibrate(args, operator=context.operator)
        except CalibrationRefused as exc:
            raise CommandError(str(exc)) from exc

    async def refresh_state(self, args: dict[str, Any], context: Context) -> dict[str, Any]:
        """Republish the retained ``…/state``."""
        await self._agent.publish_state()
        return {"published": True}


def _item(config: SiteConfig, name: str) -> Any:
    """The value of a remote item (``access.lockout_s``, ``compartments.B1.skills``)."""
    parts = name.split(".")
    if parts[0] == "compartments":
        section: Any = next(c for c in config.compartments if c.id == parts[1])
        return section.model_dump(mode="json")[parts[2]]
    return getattr(config, parts[0]).model_dump(mode="json")[parts[1]]
