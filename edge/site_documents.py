"""Signed site documents from the retained site topics: denylists and trust bundles.

The latest payload of each kind waits in a slot (each document is complete, so an older
one not yet applied is superseded and the slot stays bounded); the ``documents`` task
applies trust bundles before denylists (a denylist may need the new keys) and records
``<kind>.applied`` (audit) or ``<kind>.refused`` (alarm, at most one a minute per kind:
whoever can publish garbage on a site topic must not be able to fill the outbox).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from edge.denylist import DenylistStore
from edge.events import EventClass
from edge.signed_store import Update
from edge.trust import TrustStore

log = logging.getLogger(__name__)

REFUSAL_ALARM_INTERVAL_S = 60.0
Record = Callable[[str, dict[str, Any], EventClass], Awaitable[object]]


class SiteDocuments:
    """Applies what arrives on the site's ``denylist`` and ``trust`` topics."""

    def __init__(self, trust: TrustStore, denylist: DenylistStore, record: Record,
                 changed: Callable[[], None]) -> None:
        self._stores: dict[str, TrustStore | DenylistStore] = {"trust": trust,
                                                               "denylist": denylist}
        self._record = record
        self._changed = changed
        self._waiting: dict[str, bytes] = {}
        self._arrived = asyncio.Event()
        self._refusals: dict[str, tuple[float, int]] = {}  # kind -> (last alarm, suppressed)

    def offer(self, kind: str, payload: bytes) -> None:
        """A message on a site topic (on the loop). Empty: the topic was cleared."""
        if payload:
            self._waiting[kind] = payload
            self._arrived.set()

    def suppressed(self, kind: str) -> int:
        """Refusals of ``kind`` not alarmed since the last alarm."""
        return self._refusals.get(kind, (0.0, 0))[1]

    async def report_stored_problems(self) -> None:
        """At start: a stored document that could not be used is an alarm."""
        for kind, store in self._stores.items():
            if store.problem is not None:
                await self._alarm(kind, "stored_invalid", store.problem, 0)

    async def run(self) -> None:
        """The ``documents`` task. Cancel to stop."""
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            for kind in ("trust", "denylist"):  # keys first: a denylist may need them
                payload = self._waiting.pop(kind, None)
                if payload is not None:
                    await self._apply(kind, payload)

    async def _apply(self, kind: str, payload: bytes) -> None:
        try:
            token = payload.decode("ascii").strip()
        except UnicodeDecodeError:
            token = ""
        result = self._stores[kind].update(token)
        if result.outcome is Update.APPLIED:
            log.info("%s version %d applied", kind, result.version)
            fields: dict[str, Any] = {"version": result.version}
            if result.detail:
                fields["detail"] = result.detail[:200]
            await self._record(f"{kind}.applied", fields, EventClass.AUDIT)
            self._changed()
        elif result.outcome is not Update.SAME:
            log.warning("%s refused (%s): %s", kind, result.outcome.value, result.detail)
            await self._alarm(kind, result.outcome.value, result.detail, result.version)

    async def _alarm(self, kind: str, outcome: str, detail: str, held: int) -> None:
        now = asyncio.get_running_loop().time()
        last, suppressed = self._refusals.get(kind, (-REFUSAL_ALARM_INTERVAL_S, 0))
        if now - last < REFUSAL_ALARM_INTERVAL_S:
            self._refusals[kind] = (last, suppressed + 1)
            return
        self._refusals[kind] = (now, 0)
        await self._record(f"{kind}.refused", {
            "outcome": outcome, "detail": detail[:200], "held_version": held,
            "suppressed": suppressed}, EventClass.ALARM)
