"""Battery bays: the gate a loan passes, and the swap record a completed loan earns.

A battery bay (a compartment named by a ``[[batteries]]`` entry) opens for a member's
loan only when its battery is ready (:func:`edge.battery_state.readiness`); otherwise the
scan is refused with ``battery_not_ready`` and what is wrong. When a battery appears on
the bay's monitor after such a loan, the swap is complete: the device signs a
``curbside-swap+jwt`` record (the member, the battery taken and the one returned) for
the member's micro-credential, recorded as a ``battery.swapped`` audit event.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)
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
        return decision

    def opened(self, compartment: str, by: dict[str, Any] | None) -> None:
        """The bay's lock was operated: for a member's loan (``by`` names them), the
        loan starts; for anything else (service, audit, remote), any pending loan ends."""
        battery = self.battery_of(compartment)
        if battery is None:
            return
        if by is None:
            self._loans.pop(compartment, None)
        else:
            self._loans[compartment] = (dict(by), battery.state)

    async def _returned(self, battery: BatteryMonitor, state: BatteryState) -> None:
        bay = battery.config.compartment
        loan = self._loans.pop(bay, None) if bay is not None else None
        if loan is None or bay is None:
            return
        who, taken = loan
        try:
            record = sign_swap(
                self._key.key, kid=self._key.kid, device=self._device, site=self._site,
                now=int(self._clock().ts), member=who["member"], badge_id=who["badge_id"],
                bay=bay, taken=None if taken is None else _claim(battery.config.id, taken),
                returned=_claim(battery.config.id, state))
        except ValueError as exc:  # a reading the record cannot hold: say so, go on
            log.error("swap record for %s not signed: %s", bay, exc)
            await self._record("battery.swap_unsigned", {"compartment": bay, **who,
                                                         "error": str(exc)[:200]},
                               EventClass.ALARM)
            return
        await self._record("battery.swapped", {"compartment": bay, **who, "record": record},
                           EventClass.AUDIT)


def _claim(battery: str, state: BatteryState) -> dict[str, Any]:
    """What the record says of a battery: values out of their range are left out."""
    soc = state.soc_pct if state.soc_pct is not None and 0 <= state.soc_pct <= 100 else None
    volts = state.voltage_v if state.voltage_v is not None and state.voltage_v >= 0 else None
    return {"id": battery, "soc_pct": soc, "cycles": state.cycles, "voltage_v": volts}
