"""The tamper-evident audit trail: each audit event carries the hash of the one before.

``hash(e) = sha256(prev(e) || canonical(e))`` where ``canonical`` is the compact,
key-sorted JSON of ``{seq, ts, tq, type, fields}`` and ``prev(e)`` is the hex hash of the
previous audit event (:data:`GENESIS` for the first). Audit events are published with
``prev``, so the platform can check the chain across everything it received, and
``curbside audit verify`` checks the part still in the outbox.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def canonical(*, seq: int, ts: float, tq: str, event_type: str,
              fields: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in fields.items() if k != "prev"}
    return json.dumps(
        {"seq": seq, "ts": ts, "tq": tq, "type": event_type, "fields": body},
        separators=(",", ":"), sort_keys=True, ensure_ascii=True,
    ).encode("ascii")


def link_hash(prev: str, *, seq: int, ts: float, tq: str, event_type: str,
              fields: Mapping[str, Any]) -> str:
    """The hash of an audit event whose predecessor hashed to ``prev``."""
    return hashlib.sha256(
        prev.encode("ascii") + canonical(seq=seq, ts=ts, tq=tq, event_type=event_type,
                                         fields=fields)).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    """The outcome of a chain check: ``broken_at`` is the first bad seq, if any."""

    checked: int
    head: str
    broken_at: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify_chain(events: Iterable[Mapping[str, Any]], *, anchor: str = GENESIS) -> ChainReport:
    """Check wire-form audit events (``{seq, ts, type, prev, ...}``) in ``seq`` order.

    ``anchor`` is the hash the first event must point back to.
    """
    head, checked = anchor, 0
    for event in events:
        fields = {k: v for k, v in event.items()
                  if k not in ("seq", "ts", "tq", "type", "class")}
        if fields.get("prev") != head:
            return ChainReport(checked, head, int(event["seq"]),
                               f"prev is {fields.get('prev')!r}, expected {head}")
        head = link_hash(head, seq=int(event["seq"]), ts=float(event["ts"]),
                         tq=str(event["tq"]), event_type=str(event["type"]), fields=fields)
        checked += 1
    return ChainReport(checked, head)


def verify_outbox(path: Path) -> ChainReport:
    """Check the audit events still in an outbox file, from its stored anchor.

    Opens the file read-only; each row's stored hash must match its recomputed hash.
    """
    uri = f"file:{path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        anchor_row = db.execute("SELECT value FROM meta WHERE key='audit_anchor'").fetchone()
        rows = db.execute(
            "SELECT seq, ts, tq, type, body, hash FROM events WHERE class = 0 ORDER BY seq"
        ).fetchall()
    anchor = anchor_row[0] if anchor_row else GENESIS
    wire: list[dict[str, Any]] = []
    for seq, ts, tq, event_type, body, stored_hash in rows:
        fields = json.loads(body)
        recomputed = link_hash(str(fields.get("prev")), seq=seq, ts=ts, tq=tq,
                               event_type=event_type, fields=fields)
        if stored_hash != recomputed:
            return ChainReport(len(wire), anchor, int(seq), "stored hash does not match the row")
        wire.append({"seq": seq, "ts": ts, "tq": tq, "type": event_type, **fields})
    return verify_chain(wire, anchor=anchor)
