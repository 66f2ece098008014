"""Battery bays: the gate a loan passes, and the swap record a completed loan earns.

A battery bay (a compartment named by a ``[[batteries]]`` entry) opens for a member's
loan only when its battery is ready (:func:`edge.battery_state.readiness`); otherwise the
scan is refused with ``battery_not_ready`` and what is wrong. When a battery appears on
the bay's monitor after such a loan, the swap is complete: the device signs a
``curbside-swap+jwt`` record (the member, the battery taken and the one returned) for
the member's micro-credential, recorded as a ``battery.swapped`` audit event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from edge.access import Decision
from edge.batteries import BatteryMonitor
from edge.battery_state import BatteryState
from edge.clock import Reading
from edge.config import BatteryConfig
from edge.device_key import DeviceKey
from edge.events import EventClass
from edge.reasons import Reason
from provisioning.records import sign_swap

Record = Callable[[str, dict[str, Any], EventClass], Awaitable[object]]


class BatteryBays:
    """Every battery monitor of the site, and the loans of their bays."""

    def __init__(self, configs: tuple[BatteryConfig, ...], *, key: DeviceKey, device: str,
                 site: str, clock: Callable[[], Reading], record: Record) -> None:
        self._key, self._device, self._site = key, device, site
        self._clock = clock
        self._record = record
        self.monitors = {c.id: BatteryMonitor(c, record=record, on_returned=self._returned)
                         for c in configs}
        self._loans: dict[str, tuple[dict[str, Any], BatteryState | None]] = {}

    def battery_of(self, compartment: str) -> BatteryMonitor | None:
        return next((m for m in self.monitors.values()
                     if m.config.compartment == compartment), None)

    def gate(self, decision: Decision) -> Decision:
        """A member's grant of a battery bay, refused unless its battery is ready."""
        battery = self.battery_of(decision.compartment)
        if battery is None or decision.badge is None:
            return decision
        problems = battery.readiness()
        if problems:
            return decision.refused(Reason.BATTERY_NOT_READY, tuple(problems))
        self._loans[decision.compartment] = (
            {"member": decision.badge.member, "badge_id": decision.badge.badge_id},
            battery.state)
        return decision

    async def _returned(self, battery: BatteryMonitor, state: BatteryState) -> None:
        bay = battery.config.compartment
        loan = self._loans.pop(bay, None) if bay is not None else None
        if loan is None or bay is None:
            return
        who, taken = loan
        record = sign_swap(self._key.key, kid=self._key.kid, device=self._device,
                           site=self._site, now=int(self._clock().ts), member=who["member"],
                           badge_id=who["badge_id"], bay=bay,
                           taken=None if taken is None else _claim(battery.config.id, taken),
                           returned=_claim(battery.config.id, state))
        await self._record("battery.swapped", {"compartment": bay, **who, "record": record},
                           EventClass.AUDIT)


def _claim(battery: str, state: BatteryState) -> dict[str, Any]:
    return {"id": battery, "soc_pct": state.soc_pct, "cycles": state.cycles,
            "voltage_v": state.voltage_v}
