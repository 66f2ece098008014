"""Stamping the outbox's events: when each happened, its seq, its link in the audit chain.

Storage layer, owned by :class:`edge.outbox.Outbox`; in memory only, no I/O. A producer's
event becomes a :class:`Pending` when queued (timestamped by the outbox's clock unless
the producer says when it happened), and a :class:`StoredEvent` when the writer task
stamps it just before its commit: the next seq, and for audit events the previous hash
and its own (:mod:`edge.audit_chain`). Only the writer stamps, so seq order is commit order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.audit_chain import GENESIS, link_hash
from edge.clock import Reading, TimeQuality
from edge.events import EventClass, StoredEvent

_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps builds one per call


@dataclass(slots=True)
class Pending:
    """An event queued for the writer, not yet stamped; ``future`` waits for its commit."""

    event_type: str
    fields: dict[str, Any]
    event_class: EventClass
    ts: float
    tq: str
    future: asyncio.Future[StoredEvent] | None


def _millis(t: float) -> float:
    """``t`` to the millisecond (round() with digits is slow on the append path)."""
    return int(t * 1000 + 0.5) / 1000


def _body(fields: Mapping[str, Any]) -> str:
    return _ENCODER.encode(fields)


def _event(p: Pending, seq: int, fields: Mapping[str, Any], *,
           digest: str | None = None) -> StoredEvent:
    return StoredEvent(seq, p.ts, p.event_type, p.event_class, _body(fields), tq=p.tq,
                       fields=fields, digest=digest)


def unverified_clock() -> Reading:
    """Without a :class:`TrustedClock`: the wall clock, honestly flagged as unverified."""
    return Reading(time.time(), TimeQuality.UNTRUSTED)


class Stamper:
    """Timestamps queued events and stamps them with seq and audit chain, in order.

    ``next_seq`` and ``audit_head`` are set by the outbox when it opens its file.
    """

    def __init__(self, clock: Callable[[], Reading]) -> None:
        self.clock = clock
        self.next_seq = 1
        self.audit_head = GENESIS

    def pending(self, event_type: str, fields: dict[str, Any], event_class: EventClass,
                future: asyncio.Future[StoredEvent] | None = None,
                at: Reading | None = None) -> Pending:
        """Queue form of an event: ``at`` is when it happened (default: the clock, now)."""
        when = self.clock() if at is None else at
        return Pending(event_type, fields, event_class, _millis(when.ts), when.quality.value,
                       future)

    def stamp(self, p: Pending) -> StoredEvent:
        """Give a queued event its seq (and its place in the audit chain)."""
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        if p.event_class is not EventClass.AUDIT:
            return _event(p, seq, p.fields)
        fields = {**p.fields, "prev": self.audit_head}
        self.audit_head = link_hash(self.audit_head, seq=seq, ts=p.ts, tq=p.tq,
                                    event_type=p.event_type, fields=fields)
        return _event(p, seq, fields, digest=self.audit_head)
