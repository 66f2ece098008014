"""The platform simulator: what it checks in what a site publishes (duplicates, gaps, the
audit chain, device-signed records), and what it issues as the co-op (badges, signed
commands, denylists, trust bundles) against a real agent and a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edge.audit_chain import GENESIS, link_hash
from provisioning.errors import TokenFault
from provisioning.issuer import Issuer, init_issuer
from provisioning.keys import b64url_decode, b64url_encode, public_key_b64, thumbprint_kid
from provisioning.records import sign_calibration, sign_swap
from simulators import platform_sim
from simulators.badge_reader import PtyBadgeReader
from simulators.broker import MosquittoBroker
from simulators.platform_checks import Gap, GapCause, PlatformLedger, RecordFault
from simulators.platform_sim import NotConfigured, PlatformSimulator
from simulators.site import DEVICE, SITE, VirtualSite
from tests.test_agent import has, running

WAIT_S = 10.0
EVENTS = f"curbside/v1/{SITE}/{DEVICE}/events"
TELEMETRY = f"curbside/v1/{SITE}/{DEVICE}/telemetry"
STATE = f"curbside/v1/{SITE}/{DEVICE}/state"
DEVICE_KEY = Ed25519PrivateKey.generate()
IMPOSTOR_KEY = Ed25519PrivateKey.generate()


# --- building what a device would publish ------------------------------------------------
def offline() -> PlatformSimulator:
    """A simulator fed by hand through ``ingest`` (never connected)."""
    return PlatformSimulator("127.0.0.1", 1, site=SITE,
                             device_keys={DEVICE: DEVICE_KEY.public_key()})


def event(seq: int, event_type: str = "door.opened", cls: str = "state",
          **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "ts": 1_795_265_726.5 + seq, "tq": "floor", "type": event_type,
            "class": cls, **fields}


def batch(*events: dict[str, Any], device: str = DEVICE) -> bytes:
    return json.dumps({"device": device, "events": list(events)}).encode()


class AuditTrail:
    """Audit events chained as the outbox chains them."""

    def __init__(self, head: str = GENESIS) -> None:
        self.head = head

    def next(self, seq: int, event_type: str = "access.granted", **fields: Any
             ) -> dict[str, Any]:
        e = event(seq, event_type, "audit", prev=self.head, **fields)
        body = {k: v for k, v in e.items() if k not in ("seq", "ts", "tq", "type", "class")}
        self.head = link_hash(self.head, seq=seq, ts=e["ts"], tq=e["tq"], event_type=event_type,
                              fields=body)
        return e


def calibration(key: Ed25519PrivateKey = DEVICE_KEY, **overrides: Any) -> str:
    claims: dict[str, Any] = {
        "device": DEVICE, "site": SITE, "now": int(time.time()), "maintainer": "mia",
        "badge_id": "b-mia", "sensor": "pm-1", "sensor_kind": "pms5003", "method": "zero",
        "reference": [0.0, 0.0, 0.0], "raw": [1.0, 1.2, 0.9],
        "before": {"model": "linear", "offset": 0.0, "gain": 1.0},
        "after": {"model": "linear", "offset": -1.03, "gain": 1.0},
        "residuals": [-0.03, 0.17, -0.13], "tolerance": 2.0, "passed": True, "version": 1}
    return sign_calibration(key, **{**claims, **overrides})


def calibrated(seq: int, trail: AuditTrail, record: str, **fields: Any) -> dict[str, Any]:
    said = {"sensor": "pm-1", "method": "zero", "passed": True, "version": 1,
            "member": "mia", "badge_id": "b-mia", **fields}
    return trail.next(seq, "sensor.calibrated", **said, record=record)


def tampered(token: str, **claims: Any) -> str:
    """``token`` with claims changed and the signature kept."""
    header, payload, signature = token.split(".")
    body = {**json.loads(b64url_decode(payload)), **claims}
    return ".".join((header, b64url_encode(json.dumps(body).encode()), signature))


def announce(platform: PlatformSimulator, key: Ed25519PrivateKey) -> None:
    public = key.public_key()
    platform.ingest(STATE, json.dumps({"device": DEVICE, "device_key": {
        "kid": thumbprint_kid(public), "public_key": public_key_b64(public)}}).encode())


# --- duplicates and gaps ------------------------------------------------------------------
def test_redelivered_events_are_kept_once_in_arrival_order_and_counted() -> None:
    platform = offline()
    platform.ingest(EVENTS, batch(event(1), event(2)))
    platform.ingest(EVENTS, batch(event(2), event(3)))  # a batch sent again after reconnect
    platform.ingest(EVENTS, batch(event(3, "door.closed")))  # seq 3 again, other content

    assert [e["seq"] for e in platform.events] == [1, 2, 3]
    assert all(e["device"] == DEVICE for e in platform.events)
    assert platform.duplicates == 2
    assert platform.duplicate_keys == [(DEVICE, 2), (DEVICE, 3)]
    assert platform.conflicting_duplicates == [(DEVICE, 3)]  # a reused seq, not a resend
    assert platform.malformed == 0


def test_a_missing_event_is_reported_as_a_gap_until_it_arrives() -> None:
    platform = offline()
    platform.ingest(EVENTS, batch(event(1), event(2), event(5), event(6)))
    assert platform.gaps() == {DEVICE: [Gap(DEVICE, 3, 4, GapCause.UNEXPLAINED)]}
    assert platform.gaps(from_seq=0) == {DEVICE: [Gap(DEVICE, 0, 0, GapCause.UNEXPLAINED),
                                                  Gap(DEVICE, 3, 4, GapCause.UNEXPLAINED)]}

    platform.ingest(TELEMETRY, batch(event(3, "sensor.minute", "telemetry"),
                                     event(4, "sensor.minute", "telemetry")))
    assert platform.gaps() == {}
    assert platform.in_order_per_class()


def test_events_evicted_from_a_full_outbox_are_gaps_the_device_explained() -> None:
    """The report counts evictions; the oldest missing seqs before it are taken."""
    platform = offline()
    platform.ingest(EVENTS, batch(event(1), event(2), event(6), event(10)))
    platform.ingest(EVENTS, batch(event(11, "outbox.dropped", "alarm",
                                         evicted={"telemetry": 2, "state": 1})))
    assert platform.gaps()[DEVICE] == [Gap(DEVICE, 3, 5, GapCause.EVICTED),
                                       Gap(DEVICE, 7, 9, GapCause.UNEXPLAINED)]


def test_a_report_with_spans_explains_exactly_the_seqs_it_names() -> None:
    """With spans, a gap outside them stays unexplained though the count would cover it."""
    platform = offline()
    platform.ingest(EVENTS, batch(event(1), event(2), event(6), event(10), event(14)))
    platform.ingest(EVENTS, batch(event(15, "outbox.dropped", "alarm",
                                         evicted={"telemetry": 4, "state": 1},
                                         seqs={"telemetry": [7, 12], "state": [13, 13]})))
    assert platform.gaps()[DEVICE] == [Gap(DEVICE, 3, 5, GapCause.UNEXPLAINED),
                                       Gap(DEVICE, 7, 9, GapCause.EVICTED),
                                       Gap(DEVICE, 11, 11, GapCause.EVICTED),
                                       Gap(DEVICE, 12, 12, GapCause.UNEXPLAINED),
                                       Gap(DEVICE, 13, 13, GapCause.EVICTED)]


def test_seqs_skipped_by_a_recovered_outbox_are_explained_by_storage_recovered() -> None:
    platform = offline()
    platform.ingest(EVENTS, batch(event(1), event(2)))
    platform.ingest(EVENTS, batch(event(100_003, "storage.recovered", "alarm",
                                         resumed_at_seq=100_003, reason="corrupt")))
    assert platform.gaps() == {DEVICE: [Gap(DEVICE, 3, 100_002, GapCause.STORAGE_RECOVERED)]}


def test_events_of_a_class_arriving_behind_a_later_seq_are_flagged_out_of_order() -> None:
    platform = offline()
    platform.ingest(EVENTS, batch(event(2), event(1)))
    assert not platform.in_order_per_class()
    assert platform.out_of_order == [(DEVICE, "state", 1)]


# --- the audit chain ----------------------------------------------------------------------
def test_the_audit_chain_verifies_and_an_altered_event_breaks_it() -> None:
    trail = AuditTrail()
    chain = [trail.next(1), trail.next(2, member="ada"), trail.next(3)]
    intact = offline()
    intact.ingest(EVENTS, batch(*chain))
    altered = offline()
    altered.ingest(EVENTS, batch(chain[0], {**chain[1], "member": "eve"}, chain[2]))

    status = intact.audit_chain()[DEVICE]
    assert status.ok
    assert (status.checked, status.anchor, status.head) == (3, GENESIS, trail.head)
    broken = altered.audit_chain()[DEVICE]
    assert [seq for seq, _ in broken.breaks] == [3]  # the event after the altered one


def test_a_chain_restarting_from_genesis_is_a_break_unless_the_outbox_was_recovered() -> None:
    old, fresh = AuditTrail(), AuditTrail()
    first = old.next(1)
    recovered = event(100_001, "storage.recovered", "alarm", resumed_at_seq=100_001)
    after = fresh.next(100_002)
    explained = offline()
    explained.ingest(EVENTS, batch(first, after))  # audit drains before the alarm...
    explained.ingest(EVENTS, batch(recovered))  # ...which explains the restart
    unexplained = offline()
    unexplained.ingest(EVENTS, batch(first, after))

    assert explained.audit_chain()[DEVICE].ok
    assert explained.audit_chain()[DEVICE].restarts == (100_002,)
    assert [seq for seq, _ in unexplained.audit_chain()[DEVICE].breaks] == [100_002]


# --- device-signed records ------------------------------------------------------------------
def test_a_real_record_verifies_and_tampered_or_foreign_ones_are_rejected_with_a_reason(
) -> None:
    platform = offline()
    trail = AuditTrail()
    real = calibration()
    swap = sign_swap(DEVICE_KEY, device=DEVICE, site=SITE, now=int(time.time()),
                     member="ada", badge_id="b-ada", bay="B1",
                     taken={"id": "bat-1", "soc_pct": 20.0, "cycles": 5, "voltage_v": 12.1},
                     returned={"id": "bat-1", "soc_pct": 95.0, "cycles": 6, "voltage_v": 13.3})
    platform.ingest(EVENTS, batch(
        calibrated(1, trail, real),
        trail.next(2, "battery.swapped", compartment="B1", member="ada", badge_id="b-ada",
                   record=swap),
        calibrated(3, trail, tampered(real, sub="eve"), member="eve"),
        calibrated(4, trail, calibration(IMPOSTOR_KEY)),
        calibrated(5, trail, real, member="eve"),  # the event contradicts its record
        calibrated(6, trail, swap),  # a swap record where a calibration belongs
        calibrated(7, trail, calibration(site="oak-lane")),
        trail.next(8, "sensor.calibrated", sensor="pm-1", member="mia")))

    verified = platform.verified_records()
    assert [(r.seq, r.event_type, r.key_source) for r in verified] == [
        (1, "sensor.calibrated", "pinned"), (2, "battery.swapped", "pinned")]
    assert verified[0].record.model_dump(include={"maintainer", "sensor", "passed"}) == {
        "maintainer": "mia", "sensor": "pm-1", "passed": True}
    assert [(r.seq, r.reason) for r in platform.rejected_records()] == [
        (3, TokenFault.BAD_SIGNATURE), (4, TokenFault.UNKNOWN_KEY),
        (5, RecordFault.EVENT_MISMATCH), (6, TokenFault.WRONG_TYPE),
        (7, TokenFault.WRONG_AUDIENCE), (8, RecordFault.MISSING_RECORD)]
    assert "member" in platform.rejected_records()[2].detail
    assert platform.audit_chain()[DEVICE].ok


def test_an_announced_key_is_used_only_for_devices_without_a_pinned_key() -> None:
    trail = AuditTrail()
    unpinned = PlatformSimulator("127.0.0.1", 1, site=SITE)
    unpinned.ingest(EVENTS, batch(calibrated(1, trail, calibration())))
    assert [(r.seq, r.reason) for r in unpinned.rejected_records()] == [
        (1, RecordFault.NO_DEVICE_KEY)]
    announce(unpinned, DEVICE_KEY)  # the retained state arrives: the waiting record verifies
    assert [(r.seq, r.key_source) for r in unpinned.verified_records()] == [(1, "announced")]
    assert unpinned.rejected_records() == []

    pinned = offline()
    announce(pinned, IMPOSTOR_KEY)  # whoever publishes the state cannot replace the key
    pinned.ingest(EVENTS, batch(calibrated(1, AuditTrail(), calibration(IMPOSTOR_KEY))))
    assert [r.reason for r in pinned.rejected_records()] == [TokenFault.UNKNOWN_KEY]
    assert "not its pinned key" in pinned.key_warnings[DEVICE]


# --- the ledger, and the simulator around it ------------------------------------------------
def test_a_reply_is_matched_to_its_request_by_correlation_data_else_by_its_id() -> None:
    ledger = PlatformLedger(SITE)
    result = f"curbside/v1/{SITE}/{DEVICE}/cmd/result"
    ledger.ingest(result, json.dumps({"id": "r-1", "ok": True}).encode(), b"req-9")
    ledger.ingest(result, json.dumps({"id": "r-2", "ok": False}).encode())

    assert ledger.reply_to(DEVICE, "req-9") == {"id": "r-1", "ok": True}
    assert ledger.reply_to(DEVICE, "r-2") == {"id": "r-2", "ok": False}
    assert ledger.reply_to(DEVICE, "r-1") is None  # asked under its correlation data
    assert [device for device, _ in ledger.replies] == [DEVICE, DEVICE]


def test_the_simulator_shows_what_its_ledger_learned_and_re_exports_the_checks() -> None:
    platform = offline()
    platform.ingest(EVENTS, batch(event(1), event(3)))
    platform.ingest(EVENTS, b"[]")

    assert platform.events is platform.ledger.events
    assert platform.gaps() == platform.ledger.gaps() == {
        DEVICE: [Gap(DEVICE, 2, 2, GapCause.UNEXPLAINED)]}
    assert (platform.messages, platform.malformed) == (2, 1)
    assert platform.malformed_reasons == platform.ledger.malformed_reasons
    assert (platform_sim.Gap, platform_sim.GapCause, platform_sim.RecordFault) == (
        Gap, GapCause, RecordFault)


# --- malformed input ------------------------------------------------------------------------
TOPICS = [EVENTS, TELEMETRY, STATE, f"curbside/v1/{SITE}/{DEVICE}/status",
          f"curbside/v1/{SITE}/{DEVICE}/cmd/result"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(TOPICS), payload=st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_and_anything_unparsable_is_malformed(
    topic: str, payload: bytes
) -> None:
    platform = offline()
    platform.ingest(topic, payload)
    try:
        parsed: Any = json.loads(payload)
    except (ValueError, RecursionError):
        parsed = None
    if payload and not isinstance(parsed, dict):
        assert platform.malformed == 1
    assert platform.events == []  # no random bytes make a well-formed batch of events
    assert platform.messages == 1


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(TOPICS), body=json_values)
def test_json_that_is_not_the_documented_shape_is_malformed(topic: str, body: Any) -> None:
    platform = offline()
    platform.ingest(topic, json.dumps(body).encode())
    if not isinstance(body, dict):
        assert platform.malformed == 1
    if topic in (EVENTS, TELEMETRY):  # without a device and a list of events
        assert platform.malformed == 1
        assert platform.events == []




def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` nine times in ten, else any JSON value."""
    return st.integers(0, 9).flatmap(lambda n: valid if n else json_values)


def fuzzed_events(topic: str) -> st.SearchStrategy[dict[str, Any]]:
    classes = ["telemetry"] if topic == TELEMETRY else ["audit", "alarm", "state"]
    return st.fixed_dictionaries(
        {"seq": mostly(st.integers(1, 12)), "ts": mostly(st.floats(0, 2e9)),
         "tq": mostly(st.just("floor")), "class": mostly(st.sampled_from(classes)),
         "type": st.sampled_from(["sensor.calibrated", "battery.swapped", "outbox.dropped",
                                  "storage.recovered", "door.opened"]),
         "prev": mostly(st.just(GENESIS))},
        optional={"record": mostly(st.just(calibration())),
                  "evicted": mostly(st.dictionaries(st.sampled_from(["telemetry", "state"]),
                                                    st.integers(-3, 9))),
                  "seqs": mostly(st.dictionaries(st.sampled_from(["telemetry", "state"]),
                                                 st.lists(st.integers(-1, 12), max_size=3))),
                  "resumed_at_seq": mostly(st.integers(1, 12)),
                  "member": mostly(st.just("mia")), "sensor": mostly(st.just("pm-1")),
                  "badge_id": mostly(st.just("b-mia")), "version": mostly(st.just(1)),
                  "passed": mostly(st.just(True))})


fuzzed_batches = st.sampled_from([EVENTS, TELEMETRY]).flatmap(
    lambda topic: st.tuples(st.just(topic), st.lists(fuzzed_events(topic), min_size=1,
                                                     max_size=4)))


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(fuzzed_batches, min_size=1, max_size=6))
def test_near_valid_batches_are_taken_whole_or_counted_malformed_and_checks_never_raise(
    batches: list[tuple[str, list[dict[str, Any]]]],
) -> None:
    platform = offline()
    for topic, events in batches:
        before = (platform.malformed, len(platform.events) + platform.duplicates)
        platform.ingest(topic, batch(*events))
        after = (platform.malformed, len(platform.events) + platform.duplicates)
        assert after in ((before[0] + 1, before[1]), (before[0], before[1] + len(events)))
    platform.gaps()
    for device, gaps in platform.gaps(from_seq=1).items():  # every missing seq, once
        seen = {e["seq"] for e in platform.events if e["device"] == device}
        covered = [seq for gap in gaps for seq in range(gap.first, gap.last + 1)]
        assert sorted(covered) == sorted(set(range(1, max(seen) + 1)) - seen)
    platform.audit_chain()
    platform.verified_records()
    platform.rejected_records()
    assert all(isinstance(e["seq"], int) and e["seq"] >= 1 for e in platform.events)


# --- against a real broker and a real agent --------------------------------------------------
@pytest.fixture
def operator(tmp_path: Path, site: VirtualSite) -> Issuer:
    """A platform command key the site trusts."""
    key = init_issuer(tmp_path / "operator", name="ops@coop")
    with site.config_path.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[[trust.command_keys]]\nkid = "{key.kid}"\n'
                 f'public_key = "{key.public_key}"\n')
    return key


@pytest.fixture
def device_publisher(broker: MosquittoBroker) -> Iterator[mqtt.Client]:
    """A raw MQTT client publishing as the device would."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="as-the-device")
    client.connect(broker.host, broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


async def test_a_batch_delivered_twice_over_mqtt_is_kept_once(
    broker: MosquittoBroker, device_publisher: mqtt.Client
) -> None:
    async with PlatformSimulator(broker.host, broker.port, site=SITE) as platform:
        for payload in (batch(event(1)), batch(event(1)), b"\xff not json"):
            device_publisher.publish(EVENTS, payload, qos=1).wait_for_publish(5)
        await platform.wait_for(lambda p: p.duplicates == 1 and p.malformed == 1, WAIT_S)
    assert [e["seq"] for e in platform.events] == [1]


async def test_a_signed_open_round_trips_with_its_result(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker, operator: Issuer
) -> None:
    async with PlatformSimulator(broker.host, broker.port, site=SITE,
                                 command_key=operator) as platform, running(site) as h:
        await asyncio.wait_for(h.agent.link.wait_subscribed(), WAIT_S)
        opened = await platform.send_command(DEVICE, "open", {"compartment": "A1"})
        pong = await platform.send_command(DEVICE, "ping")
        nowhere = await platform.send_command(DEVICE, "open", {"compartment": "Z9"})
        await platform.wait_for(lambda p: any(
            e["type"] == "access.granted" and e.get("via") == "remote" for e in p.events), WAIT_S)

    assert opened["ok"] is True, opened
    assert opened["result"]["compartment"] == "A1"
    assert opened["command"] == "open"
    assert pong["ok"] is True
    assert pong["result"]["boot_id"] == h.agent.boot_id
    assert nowhere["ok"] is False
    assert "Z9" in nowhere["error"]
    [granted] = platform.of_type("access.granted")
    assert (granted["compartment"], granted["operator"]) == ("A1", "ops@coop")
    assert [s.state for s in h.factory.pin(17).states] == [False, True, False]


async def test_a_badge_issued_by_the_platform_opens_a_door_and_the_trail_checks_out(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    async with PlatformSimulator(broker.host, broker.port, site=SITE,
                                 issuer=site.issuer) as platform, running(site) as h:
        await asyncio.wait_for(h.agent.link.wait_up(), WAIT_S)
        reader.present("A1", platform.issue_badge("ada", groups=("hand-tools",)))
        await h.until(has("door.closed", "A1"))
        await asyncio.wait_for(h.agent.outbox.wait_empty(), WAIT_S)
        sent = {e.seq for e in h.events}
        await platform.wait_for(lambda p: sent <= {e["seq"] for e in p.events}, WAIT_S)
        await platform.wait_for(lambda p: DEVICE in p.states, WAIT_S)

    [granted] = platform.of_type("access.granted")
    assert (granted["member"], granted["via"]) == ("ada", "badge")
    assert platform.of_type("locker.unlocked")[0]["compartment"] == "A1"
    assert platform.gaps(from_seq=1) == {}
    chain = platform.audit_chain()[DEVICE]
    assert chain.ok
    assert chain.anchor == GENESIS
    assert platform.in_order_per_class()
    assert platform.malformed == 0
    assert platform.states[DEVICE]["device_key"]["kid"] == h.agent.device_key.kid
    assert platform.boots[DEVICE] == [h.agent.boot_id]


async def test_a_denylist_published_by_the_platform_revokes_a_member(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    async with PlatformSimulator(broker.host, broker.port, site=SITE,
                                 issuer=site.issuer) as platform, running(site) as h:
        await asyncio.wait_for(h.agent.link.wait_subscribed(), WAIT_S)
        badge = platform.issue_badge("ada", groups=("hand-tools",))
        published = await platform.publish_denylist(members=["ada"])
        await platform.wait_for(lambda p: bool(p.of_type("denylist.applied")), WAIT_S)
        reader.present("A1", badge)
        await platform.wait_for(lambda p: bool(p.of_type("access.denied")), WAIT_S)
        await platform.clear_retained()

    assert published.version == 1
    assert platform.of_type("denylist.applied")[0]["version"] == 1
    [denied] = platform.of_type("access.denied")
    assert (denied["member"], denied["reason"]) == ("ada", "revoked")
    assert [s.state for s in h.factory.pin(17).states] == [False]


async def test_a_trust_bundle_published_by_the_platform_admits_a_new_issuer(
    tmp_path: Path, site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker,
    operator: Issuer
) -> None:
    root = init_issuer(tmp_path / "root", name="elm-street-root")
    with site.config_path.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[[trust.root_keys]]\nkid = "{root.kid}"\npublic_key = "{root.public_key}"\n')
    newer = init_issuer(tmp_path / "issuer-2", name="elm-street-coop")
    async with PlatformSimulator(broker.host, broker.port, site=SITE, issuer=newer,
                                 command_key=operator, root=root) as platform, \
            running(site) as h:
        await asyncio.wait_for(h.agent.link.wait_subscribed(), WAIT_S)
        bundle = await platform.publish_trust(issuer_keys=[site.issuer, newer])
        await platform.wait_for(lambda p: bool(p.of_type("trust.applied")), WAIT_S)
        reader.present("A1", platform.issue_badge("ada", groups=("hand-tools",)))
        await platform.wait_for(lambda p: bool(p.of_type("locker.unlocked")), WAIT_S)
        refreshed = await platform.send_command(DEVICE, "refresh_state")
        await platform.wait_for(
            lambda p: p.states.get(DEVICE, {}).get("trust_version") == bundle.version, WAIT_S)
        await platform.clear_retained()
    assert refreshed["ok"] is True
    assert platform.of_type("access.granted")[0]["member"] == "ada"


async def test_what_needs_a_key_it_was_not_given_says_which() -> None:
    platform = offline()
    with pytest.raises(NotConfigured, match="command_key"):
        await platform.send_command(DEVICE, "open", {"compartment": "A1"})
    with pytest.raises(NotConfigured, match="issuer"):
        platform.issue_badge("ada")
