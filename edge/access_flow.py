"""From a badge scan to a durable decision to an unlock: the agent's access path.

Application layer, composed by :mod:`edge.agent`. The badge reader's lines are decoded,
each scan decided by the :class:`~edge.access.AccessPolicy` (behind the failure
throttle, battery-bay gating and the limited-use ledger), the decision appended to the
outbox, and so durable, before :meth:`LockerBank.unlock` energises anything (write-ahead
audit); a limited-use badge is consumed durably before that. Audit mode opens every
compartment in turn, each grant recorded before its coil.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edge.access import AUDIT_TARGET, AccessPolicy, Decision
from edge.backoff import backoff_delay
from edge.battery_bays import BatteryBays
from edge.clock import Reading
from edge.config import SiteConfig
from edge.denylist import DenylistStore
from edge.events import EventClass, StoredEvent
from edge.locker_backend import UnlockFailed
from edge.lockers import LockerBank
from edge.reasons import CREDENTIAL_FAILURES, Reason
from edge.throttle import FailureThrottle
from edge.trust import TrustStore
from edge.uses import UseLedger
from firmware_bridge.badge_reader import BadgeReaderDecoder, BadgeScan, GarbageLine
from firmware_bridge.serial_port import AsyncSerialPort, SerialPortClosed, SerialPortError

log = logging.getLogger(__name__)

Record = Callable[..., Awaitable[StoredEvent]]  # Agent.record(type, fields, class, at=None)


@dataclass
class AccessStats:
    """Counters for the live view and the ``state`` snapshot."""

    scans: int = 0
    garbage_lines: int = 0
    unlocks: int = 0


class AccessFlow:
    """Decides scans and operates locks for one site.

    ``record`` makes an event durable (and observed); ``settle`` returns once the locker
    bank's events so far are recorded, so an unlock's events come before what follows.
    """

    def __init__(self, config: SiteConfig, *, trust: TrustStore, denylist: DenylistStore,
                 uses: UseLedger, bays: BatteryBays, clock: Callable[[], Reading],
                 record: Record, settle: Callable[[], Awaitable[None]]) -> None:
        self._trust = trust
        self._denylist = denylist
        self._uses = uses
        self._bays = bays
        self._clock = clock
        self._record = record
        self._settle = settle
        self.stats = AccessStats()
        self.reader_ready = asyncio.Event()  # set while the badge reader's port is open
        self.config = config
        self.policy = self._build_policy()
        self._throttle = FailureThrottle(
            max_failures=config.access.max_failures, window_s=config.access.failure_window_s,
            lockout_s=config.access.lockout_s)

    def _build_policy(self) -> AccessPolicy:
        config = self.config
        return AccessPolicy(config.device.site, config.compartments,
                            keys=self._trust.issuer_keys, access=config.access,
                            leeway_s=config.trust.leeway_s, denylist=self._denylist)

    def reconfigure(self, config: SiteConfig) -> None:
        """A validated configuration: its access rules and compartments decide from now."""
        self.config = config
        self.policy = self._build_policy()
        self._throttle.reconfigure(max_failures=config.access.max_failures,
                                   window_s=config.access.failure_window_s,
                                   lockout_s=config.access.lockout_s)

    async def read_badges(self, lockers: LockerBank) -> None:
        """Read the badge reader forever, reopening its port with backoff when it fails."""
        url = self.config.reader.url
        attempt = 0
        while True:
            decoder = BadgeReaderDecoder()
            try:
                async with AsyncSerialPort(url, baudrate=self.config.reader.baudrate) as port:
                    attempt = 0
                    log.info("badge reader open on %s", url)
                    self.reader_ready.set()
                    async for chunk in port:
                        for message in decoder.feed(chunk):
                            await self._on_reader_message(message, lockers)
            except (SerialPortError, SerialPortClosed) as exc:
                self.reader_ready.clear()
                delay = backoff_delay(attempt, 0.5, 30.0)
                attempt += 1
                log.warning("badge reader %s: %s; retry in %.1fs", url, exc, delay)
                await asyncio.sleep(delay)

    async def _on_reader_message(
        self, message: BadgeScan | GarbageLine, lockers: LockerBank
    ) -> None:
        if isinstance(message, GarbageLine):
            self.stats.garbage_lines += 1
            log.warning("badge reader sent garbage (%s): %r", message.kind.value, message.sample)
            return
        await self.handle_scan(message, lockers)

    async def handle_scan(self, scan: BadgeScan, lockers: LockerBank) -> None:
        """Decide a scan, make the decision durable, then (if granted) unlock."""
        self.stats.scans += 1
        now = self._clock()  # one reading: the time decided on is the time recorded
        if self._throttle.locked:
            decision = Decision(scan.compartment, Reason.LOCKED_OUT)
        else:
            decision = self.policy.decide(scan, now=now)
        if decision.granted and decision.via == "badge":
            decision = self._bays.gate(decision)
        if decision.granted and decision.badge is not None:
            decision = await self._consume_use(decision, now)
        # Durable before the coil: append returns after the commit. If storage has failed
        # (disk full), the decision is held in memory, storage.fault is raised, and the
        # member still gets in: a full SD card must not lock the library.
        stored = await self._record(decision.event_type, decision.event_fields(),
                                    EventClass.AUDIT, now)
        if not stored.durable:
            log.error("decision seq %d held in memory only: storage has failed", stored.seq)
        if decision.reason in CREDENTIAL_FAILURES and self._throttle.failure():
            await self._locked_out()
        log.info("%s %s: %s", decision.event_type, decision.compartment, decision.reason.value)
        if not decision.granted:
            return
        by = {} if decision.badge is None else {"member": decision.badge.member,
                                                 "badge_id": decision.badge.badge_id}
        if decision.compartment == AUDIT_TARGET:
            await self.audit_mode(lockers, by)
        else:
            await self.unlock(lockers, decision.compartment, by, loan=decision.via == "badge")

    async def _locked_out(self) -> None:
        access = self.config.access
        log.warning("reader locked for %.0fs after %d bad credentials", access.lockout_s,
                    access.max_failures)
        await self._record("reader.locked_out", {
            "failures": access.max_failures, "window_s": access.failure_window_s,
            "lockout_s": access.lockout_s}, EventClass.ALARM)

    async def _consume_use(self, decision: Decision, now: Reading) -> Decision:
        """A limited badge's use, durably recorded, or the decision refused: used up, or
        unrecordable (fail closed: an unrecorded use could be used again)."""
        assert decision.badge is not None
        try:
            if await self._uses.consume(decision.badge, now=now.ts):
                return decision
            return decision.refused(Reason.USED_UP)
        except (sqlite3.Error, OSError) as exc:
            log.error("cannot record a use of badge %s: %s", decision.badge.badge_id, exc)
            await self._record("storage.fault", {"store": "uses", "error": str(exc)[:200]},
                               EventClass.ALARM)
            return decision.refused(Reason.STORAGE_FAULT)

    async def unlock(self, lockers: LockerBank, compartment: str,
                     by: dict[str, Any], *, loan: bool = False) -> int | None:
        """Operate ``compartment``'s lock (its grant already recorded); the pulse in ms, or
        None if it failed (the bank has emitted ``locker.unlock_failed``). ``loan``: a
        member's own grant (a battery bay's loan starts only once its lock operated)."""
        try:
            pulse_ms: int | None = await lockers.unlock(compartment, by)
            self.stats.unlocks += 1
            self._bays.opened(compartment, by if loan else None)
        except UnlockFailed:
            pulse_ms = None
        await self._settle()  # its events are recorded before what follows
        return pulse_ms

    async def audit_mode(self, lockers: LockerBank, by: dict[str, Any]) -> list[str]:
        """Open every compartment in turn, ``access.audit_interval_s`` apart, each grant
        recorded before its coil; ``by`` names who asked. Returns the ids opened (a
        compartment whose unlock failed is left out, and its failure recorded)."""
        ids = [c.id for c in self.config.compartments]
        await self._record("audit_mode.started", {**by, "compartments": ids},
                           EventClass.AUDIT)
        opened = []
        for index, compartment in enumerate(ids):
            if index:
                await asyncio.sleep(self.config.access.audit_interval_s)
            await self._record("access.granted", {"compartment": compartment, "reason":
                                                   Reason.GRANTED.value, "via": "audit", **by},
                               EventClass.AUDIT)
            if await self.unlock(lockers, compartment, {"via": "audit", **by}) is not None:
                opened.append(compartment)
        await self._record("audit_mode.finished", {**by, "opened": len(opened)},
                           EventClass.AUDIT)
        return opened
