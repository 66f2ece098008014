"""What the co-op's platform learns from what a site publishes, checked: pure, no I/O.

Simulator layer (the far side of the MQTT interface, docs/mqtt-api.md), sans-I/O: a
:class:`PlatformLedger` is handed each message as ``(topic, payload, correlation)`` by
whoever receives it (:class:`simulators.platform_sim.PlatformSimulator` over MQTT, a test
by hand) and :meth:`PlatformLedger.ingest`, which never raises for what arrives, does the
rest:

- events are deduplicated by ``(device, seq)`` (delivery is at least once) and kept in
  arrival order; a duplicate whose content differs (a reused seq) is listed apart;
- :meth:`~PlatformLedger.gaps` lists the seqs missing per device. ``seq`` is one counter
  per device, shared by every class and kept across restarts (the seq lease), so a device
  has one contiguous range, not one per boot. A missing seq is ``evicted`` when an
  ``outbox.dropped`` report accounts for it: the report gives, per class, how many were
  evicted and the lowest and highest of their seqs, and that many missing seqs in that
  span are taken, lowest first (a report without spans, from an older agent: the oldest
  missing seqs before the report), ``storage_recovered`` when it lies below a
  ``storage.recovered`` event's ``resumed_at_seq`` (lost with the damaged file, or never
  issued: the lease skips ahead), otherwise ``unexplained``. Classes drain in priority
  order, so a gap can be telemetry or state still on its way: ask once the device's outbox
  is empty. Telemetry that expired in the broker (its message expiry) leaves an
  unexplained gap: nothing on the wire can say so;
- the audit hash chain is recomputed per device (:meth:`~PlatformLedger.audit_chain`);
- device-signed records (``record`` in ``sensor.calibrated`` and ``battery.swapped``) are
  verified against the device's key, and checked against the event that carries them
  (:mod:`simulators.platform_records`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeGuard

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.audit_chain import GENESIS, link_hash
from edge.events import EventClass
from edge.topics import ROOT
from simulators.platform_records import (
    RECORD_EVENTS,
    RecordChecker,
    RecordFault,
    RejectedRecord,
    VerifiedRecord,
)

__all__ = ["ChainStatus", "Gap", "GapCause", "PlatformLedger", "RecordFault", "RejectedRecord",
           "VerifiedRecord"]
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CLASSES = frozenset(c.value for c in EventClass)
Event = dict[str, Any]


class GapCause(StrEnum):
    EVICTED = "evicted"  # counted by an outbox.dropped report
    STORAGE_RECOVERED = "storage_recovered"  # below a storage.recovered resumed_at_seq
    UNEXPLAINED = "unexplained"


@dataclass(frozen=True)
class Gap:
    """Seqs ``first..last`` (inclusive) of ``device`` that never arrived."""

    device: str
    first: int
    last: int
    cause: GapCause

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class ChainStatus:
    """A device's audit chain as received. ``anchor`` is the ``prev`` of the first audit
    event received (:data:`GENESIS` when the platform saw the device from its start);
    ``restarts`` are seqs where a fresh outbox began again from genesis, each after a
    ``storage.recovered``; ``breaks`` are ``(seq, problem)``."""

    checked: int
    anchor: str
    head: str
    restarts: tuple[int, ...] = ()
    breaks: tuple[tuple[int, str], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.breaks


class _Malformed(ValueError):
    pass


@dataclass
class PlatformLedger:
    """What the platform knows of one site, from the messages handed to :meth:`ingest`.

    ``device_keys`` pins the public key of each device (``device -> key`` or its base64url
    form). Pinning matters: a key a device announces in its retained ``state`` proves
    nothing, since whoever can publish on that topic (an impostor, a cloned SD card, a
    compromised device) announces the key it signs with. A pinned device's records verify
    only against the pinned key, whatever it announces (a different announcement is noted
    in ``key_warnings``); a device not pinned is trusted on its announcement, and its
    records say ``key_source="announced"``.
    """

    site: str
    device_keys: Mapping[str, Ed25519PublicKey | str] | None = None

    events: list[Event] = field(default_factory=list, init=False)  # unique, arrival order
    duplicates: int = field(default=0, init=False)
    duplicate_keys: list[tuple[str, int]] = field(default_factory=list, init=False)
    conflicting_duplicates: list[tuple[str, int]] = field(default_factory=list, init=False)
    out_of_order: list[tuple[str, str, int]] = field(default_factory=list, init=False)
    status: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)
    states: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)
    boots: dict[str, list[str]] = field(default_factory=dict, init=False)  # boot_ids seen
    replies: list[tuple[str, dict[str, Any]]] = field(default_factory=list, init=False)
    documents: dict[str, bytes] = field(default_factory=dict, init=False)  # others' retained
    key_warnings: dict[str, str] = field(default_factory=dict, init=False)
    messages: int = field(default=0, init=False)
    malformed: int = field(default=0, init=False)
    malformed_reasons: list[str] = field(default_factory=list, init=False)  # the last 100
    unknown_topics: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._seen: dict[tuple[str, int], Event] = {}
        self._wire: dict[str, list[tuple[int, Event]]] = {}  # device -> (seq, wire event)
        self._last_in_class: dict[tuple[str, str], int] = {}
        # (report seq, [(events evicted, lowest seq, highest seq)]) per outbox.dropped
        self._drop_reports: dict[str, list[tuple[int, list[tuple[int, int, int]]]]] = {}
        self._recoveries: dict[str, list[int]] = {}  # resumed_at_seq of storage.recovered
        self._records = RecordChecker(self.site, self.device_keys, self.key_warnings)
        self._answers: dict[tuple[str, str], dict[str, Any]] = {}  # (device, request) -> reply

    # --- ingest -----------------------------------------------------------------------------
    def ingest(self, topic: str, payload: bytes, correlation: bytes | None = None) -> None:
        """Take one message as received on ``topic`` (``correlation``: its MQTT correlation
        data). Never raises for its content: a message that is not what docs/mqtt-api.md
        describes is counted in ``malformed`` (its reason in ``malformed_reasons``), a topic
        outside the API in ``unknown_topics``; a batch of events is taken whole or not at
        all."""
        self.messages += 1
        try:
            self._route(topic, payload, correlation)
        except _Malformed as exc:
            self.malformed += 1
            self.malformed_reasons = [*self.malformed_reasons[-99:], f"{topic}: {exc}"]

    def reply_to(self, device: str, request: str) -> dict[str, Any] | None:
        """The first reply of ``device`` to the command with id ``request``, if it came:
        matched by correlation data, else by the reply's ``id``."""
        return self._answers.get((device, request))

    def _route(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        parts = topic.split("/")
        if parts[:3] != [*ROOT.split("/"), self.site] or len(parts) < 4:
            self.unknown_topics += 1
            return
        if len(parts) == 4 and parts[3] in ("denylist", "trust"):
            self.documents[parts[3]] = payload  # someone else's (ours are not echoed)
            return
        device, kind = parts[3], "/".join(parts[4:])
        handlers: dict[str, Callable[[str, dict[str, Any]], None]] = {
            "status": self._take_status, "state": self._take_state,
            "events": lambda d, body: self._take_events(d, body, telemetry=False),
            "telemetry": lambda d, body: self._take_events(d, body, telemetry=True),
            "cmd/result": lambda d, body: self._take_reply(d, body, correlation)}
        if kind == "cmd":
            return  # another operator's request: not ours to answer
        handler = handlers.get(kind)
        if handler is None:
            self.unknown_topics += 1
            return
        if not payload and kind in ("status", "state"):  # a retained message cleared
            (self.status if kind == "status" else self.states).pop(device, None)
            return
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # bad UTF-8 and JSON are ValueErrors
            raise _Malformed(f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _Malformed("not a JSON object")
        handler(device, body)

    def _take_status(self, device: str, body: dict[str, Any]) -> None:
        if not isinstance(body.get("online"), bool):
            raise _Malformed("status without a boolean online")
        self.status[device] = body
        boot, seen = body.get("boot_id"), self.boots.setdefault(device, [])
        if body["online"] and isinstance(boot, str) and (not seen or seen[-1] != boot):
            seen.append(boot)

    def _take_state(self, device: str, body: dict[str, Any]) -> None:
        if body.get("device") != device:
            raise _Malformed(f"state of device {body.get('device')!r} on {device}'s topic")
        self.states[device] = body
        self._records.learn_key(device, body.get("device_key"))

    def _take_reply(self, device: str, body: dict[str, Any], correlation: bytes | None) -> None:
        if not isinstance(body.get("id"), str) or not isinstance(body.get("ok"), bool):
            raise _Malformed("a reply has a string id and a boolean ok")
        self.replies.append((device, body))
        request = correlation.decode("utf-8", "replace") if correlation else body["id"]
        self._answers.setdefault((device, request), body)

    def _take_events(self, device: str, body: dict[str, Any], *, telemetry: bool) -> None:
        if body.get("device") != device:
            raise _Malformed(f"events of device {body.get('device')!r} on {device}'s topic")
        batch = body.get("events")
        if not isinstance(batch, list) or not batch:
            raise _Malformed("events is not a non-empty list")
        for event in batch:
            _check_event(event, telemetry=telemetry)
        for event in batch:
            self._take_event(device, event)

    def _take_event(self, device: str, event: Event) -> None:
        seq, cls = int(event["seq"]), str(event["class"])
        key = (device, seq)
        first = self._seen.get(key)
        if first is not None:
            self.duplicates += 1
            self.duplicate_keys.append(key)
            if first != event:  # the same seq, another event: a seq was reused
                self.conflicting_duplicates.append(key)
            return
        self._seen[key] = event
        self._wire.setdefault(device, []).append((seq, event))
        if seq < self._last_in_class.get((device, cls), 0):
            self.out_of_order.append((device, cls, seq))
        self._last_in_class[(device, cls)] = max(seq, self._last_in_class.get((device, cls), 0))
        self.events.append({**event, "device": device})
        if event["type"] == "outbox.dropped":
            self._drop_reports.setdefault(device, []).append((seq, _drop_pieces(seq, event)))
        elif event["type"] == "storage.recovered" and _is_int(event.get("resumed_at_seq")):
            self._recoveries.setdefault(device, []).append(int(event["resumed_at_seq"]))
        elif event["type"] in RECORD_EVENTS:
            self._records.check(device, seq, event)
    # --- records ------------------------------------------------------------------------
    def verified_records(self) -> list[VerifiedRecord]:
        """Records that verified against the device's key and agree with their event."""
        return self._records.verified()

    def rejected_records(self) -> list[RejectedRecord]:
        """Records refused, with the reason; those waiting for a device key are listed as
        ``no_device_key`` until the device's ``state`` announces one."""
        return self._records.rejected()

    # --- checks -------------------------------------------------------------------------
    def of_type(self, event_type: str) -> list[Event]:
        return [e for e in self.events if e["type"] == event_type]

    def of_device(self, device: str) -> list[Event]:
        return [e for e in self.events if e["device"] == device]

    def in_order_per_class(self) -> bool:
        """True if, per device and class, every event arrived after those of lower seq."""
        return not self.out_of_order

    def gaps(self, *, from_seq: int | None = None) -> dict[str, list[Gap]]:
        """Per device with missing seqs, the missing ranges up to the highest seq received,
        from ``from_seq`` (default: the lowest received; 1 for the device's whole life),
        each with its cause (module docstring)."""
        out: dict[str, list[Gap]] = {}
        for device, received in self._wire.items():
            seqs = sorted(seq for seq, _ in received)
            start = seqs[0] if from_seq is None else from_seq
            missing: list[list[Any]] = []
            for seq in seqs:
                if seq > start:
                    missing.append([start, seq - 1, GapCause.UNEXPLAINED])
                start = max(start, seq + 1)
            if missing:
                out[device] = self._explain(device, missing)
        return out

    def _explain(self, device: str, missing: list[list[Any]]) -> list[Gap]:
        recovered = max(self._recoveries.get(device, []), default=0)
        segments = [piece for a, b, cause in missing
                    for piece in _split(a, b, recovered, GapCause.STORAGE_RECOVERED, cause)]
        for _, pieces in sorted(self._drop_reports.get(device, [])):
            for count, low, high in pieces:
                segments = _carve_evicted(segments, count, low, high)
        gaps: list[Gap] = []
        for a, b, cause in segments:
            if gaps and gaps[-1].cause is cause and gaps[-1].last == a - 1:
                gaps[-1] = Gap(device, gaps[-1].first, b, cause)
            else:
                gaps.append(Gap(device, a, b, cause))
        return gaps

    def audit_chain(self) -> dict[str, ChainStatus]:
        """Per device, the audit hash chain recomputed over the audit events received
        (docs/mqtt-api.md): every ``prev`` must be the hash of the audit event before it.
        A chain beginning again from genesis is a restart when a ``storage.recovered``
        falls between the two events (a fresh outbox), otherwise a break."""
        out: dict[str, ChainStatus] = {}
        for device, received in self._wire.items():
            audit = sorted((s, e) for s, e in received if e["class"] == EventClass.AUDIT.value)
            if not audit:
                continue
            anchor = head = str(audit[0][1]["prev"])
            last, restarts, breaks = 0, [], []
            recoveries = self._recoveries.get(device, [])
            for seq, event in audit:
                prev = str(event["prev"])
                if prev != head:
                    if prev == GENESIS and any(last < r <= seq for r in recoveries):
                        restarts.append(seq)
                    else:
                        breaks.append((seq, f"prev is {prev}, expected {head}"))
                fields = {k: v for k, v in event.items()
                          if k not in ("seq", "ts", "tq", "type", "class")}
                head = link_hash(prev, seq=seq, ts=float(event["ts"]), tq=str(event["tq"]),
                                 event_type=str(event["type"]), fields=fields)
                last = seq
            out[device] = ChainStatus(len(audit), anchor, head, tuple(restarts), tuple(breaks))
        return out


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _drop_pieces(report: int, event: Event) -> list[tuple[int, int, int]]:
    """An ``outbox.dropped`` report as (count, lowest, highest seq) per class: the class's
    span from ``seqs`` when the report gives one (first, being exact), else every seq
    before the report (an older agent's report: counts only)."""
    evicted, spans = event.get("evicted"), event.get("seqs")
    spans = spans if isinstance(spans, dict) else {}
    exact, loose = [], []
    for cls, count in (evicted.items() if isinstance(evicted, dict) else ()):
        if not _is_int(count) or count <= 0:
            continue
        span = spans.get(cls)
        if isinstance(span, list) and len(span) == 2 and all(_is_int(v) for v in span) \
                and 1 <= span[0] <= span[1]:
            exact.append((count, span[0], span[1]))
        else:
            loose.append((count, 1, report - 1))
    return exact + loose


def _carve_evicted(segments: list[list[Any]], count: int, low: int,
                   high: int) -> list[list[Any]]:
    """Mark up to ``count`` unexplained missing seqs within ``low..high``, lowest first,
    as evicted."""
    carved: list[list[Any]] = []
    for a, b, cause in segments:
        if cause is not GapCause.UNEXPLAINED or count <= 0 or b < low or a > high:
            carved.append([a, b, cause])
            continue
        start = max(a, low)
        take = min(count, min(b, high) - start + 1)
        count -= take
        carved += [piece for piece in ([a, start - 1, cause],
                                       [start, start + take - 1, GapCause.EVICTED],
                                       [start + take, b, cause]) if piece[0] <= piece[1]]
    return carved


def _split(a: int, b: int, cut: int, below: GapCause, cause: GapCause) -> list[list[Any]]:
    """``a..b`` as pieces: seqs under ``cut`` become ``below``, the rest keep ``cause``."""
    if cut <= a:
        return [[a, b, cause]]
    if cut > b:
        return [[a, b, below]]
    return [[a, cut - 1, below], [cut, b, cause]]


def _check_event(event: object, *, telemetry: bool) -> None:
    """Raise :class:`_Malformed` unless ``event`` is a wire event of the right topic."""
    if not isinstance(event, dict):
        raise _Malformed("an event is not an object")
    seq, ts, cls = event.get("seq"), event.get("ts"), event.get("class")
    if not _is_int(seq) or seq < 1:
        raise _Malformed(f"seq {seq!r} is not a positive integer")
    try:
        finite = (_is_int(ts) or isinstance(ts, float)) and math.isfinite(ts)
    except OverflowError:  # an integer beyond any float
        finite = False
    if not finite:
        raise _Malformed(f"seq {seq}: ts {ts!r} is not a time")
    if not isinstance(event.get("type"), str) or not isinstance(event.get("tq"), str):
        raise _Malformed(f"seq {seq}: type and tq must be strings")
    if not isinstance(cls, str) or cls not in _CLASSES \
            or (cls == EventClass.TELEMETRY.value) != telemetry:
        raise _Malformed(f"seq {seq}: class {cls!r} on the {'telemetry' if telemetry else 'events'}"
                         " topic")
    prev = event.get("prev")
    if cls == EventClass.AUDIT.value and not (isinstance(prev, str) and _HEX64.fullmatch(prev)):
        raise _Malformed(f"seq {seq}: an audit event without a chain link")
