"""The event model shared by the outbox, the forwarder and the agent.

An event is a type (``access.granted``), a priority class, a time, and type-specific
fields stored as JSON. :class:`StoredEvent` is an event with its device-monotonic ``seq``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

ROW_OVERHEAD = 48  # bytes a row costs beyond its body and type (key, ts, class, size, index)
RESERVED_FIELDS = frozenset({"seq", "ts", "tq", "type", "class"})


class EventClass(StrEnum):
    """Priority class of an event, highest first. Audit and alarm are never evicted."""

    AUDIT = "audit"
    ALARM = "alarm"
    STATE = "state"
    TELEMETRY = "telemetry"

    @property
    def priority(self) -> int:
        return _PRIORITY[self]

    @staticmethod
    def by_priority(priority: int) -> EventClass:
        """The class stored as ``priority`` (0 audit ... 3 telemetry)."""
        return _BY_PRIORITY[priority]

    @property
    def protected(self) -> bool:
        return self in (EventClass.AUDIT, EventClass.ALARM)


_PRIORITY = {c: i for i, c in enumerate(EventClass)}
_BY_PRIORITY = list(EventClass)


class StoredEvent:
    """An event with its ``seq``. ``durable`` is False only while storage has failed.

    ``body`` is the JSON of the type-specific fields as stored; ``fields`` parses it on
    demand, so draining a backlog never decodes and re-encodes what it only forwards.
    """

    __slots__ = ("_fields", "body", "digest", "durable", "event_class", "seq", "size", "tq",
                 "ts", "type")

    def __init__(self, seq: int, ts: float, event_type: str, event_class: EventClass,
                 body: str, *, tq: str = "untrusted", fields: Mapping[str, Any] | None = None,
                 durable: bool = True, digest: str | None = None) -> None:
        self.seq = seq
        self.ts = ts
        self.tq = tq  # time quality of ``ts``: synchronised, floor or untrusted
        self.type = event_type
        self.event_class = event_class
        self.body = body
        self.size = len(body) + len(event_type) + ROW_OVERHEAD  # bytes against the budget
        self.durable = durable
        self.digest = digest  # audit events: this event's chain hash
        self._fields = fields

    @property
    def fields(self) -> Mapping[str, Any]:
        if self._fields is None:
            self._fields = json.loads(self.body)
        return self._fields

    def held(self) -> StoredEvent:
        """This event, marked as held in memory (not durable)."""
        return StoredEvent(self.seq, self.ts, self.type, self.event_class, self.body,
                           tq=self.tq, fields=self._fields, durable=False, digest=self.digest)

    def to_wire(self) -> dict[str, Any]:
        """The event as published: ``{seq, ts, tq, type, class, ...fields}``."""
        return {"seq": self.seq, "ts": self.ts, "tq": self.tq, "type": self.type,
                "class": self.event_class.value, **self.fields}

    def wire_json(self) -> str:
        """:meth:`to_wire` as JSON, spliced from the stored body without decoding it."""
        head = (f'{{"seq":{self.seq},"ts":{self.ts!r},"tq":"{self.tq}",'
                f'"type":{json.dumps(self.type)},"class":"{self.event_class.value}"')
        return head + ("}" if self.body == "{}" else "," + self.body[1:])

    def __repr__(self) -> str:
        return f"StoredEvent(seq={self.seq}, type={self.type!r}, class={self.event_class.value})"


@dataclass
class OutboxStats:
    """Depth and bytes per class, the oldest waiting event, drops, and faults."""

    depth: dict[str, int]
    bytes: dict[str, int]
    oldest_ts: float | None
    wal_bytes: int
    dropped: dict[str, int]
    held_in_memory: int
    fault: str | None

    @property
    def total_depth(self) -> int:
        return sum(self.depth.values())
