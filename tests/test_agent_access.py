"""Access control end to end: single-use badges across restarts, audit mode from the
reader, issuer keys rotated by a signed trust bundle on the site topic, and a clock set
back."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.clock import TrustedClock
from edge.outbox import EventClass, StoredEvent
from provisioning.badges import issue_badge
from provisioning.issuer import init_issuer
from provisioning.trust import issue_trust_bundle
from simulators.badge_reader import PtyBadgeReader
from simulators.broker import MosquittoBroker
from simulators.site import SITE, VirtualSite
from tests.test_agent import has, running


async def test_single_use_badge_is_consumed_durably(
    offline_site: VirtualSite, reader: PtyBadgeReader
) -> None:
    site = offline_site
    token = site.badge("ada", groups=("hand-tools",), use_limit=1)
    ledger = site.directory / "uses.db"
    counted_when_recorded: list[int] = []

    async with running(site) as first:
        record = first.agent._observer
        assert record is not None

        def observe(event: StoredEvent) -> None:
            if event.type == "access.granted":  # the use is on disk before the decision
                with sqlite3.connect(ledger) as db:
                    counted_when_recorded.append(db.execute("SELECT used FROM uses").fetchone()[0])
            record(event)

        first.agent._observer = observe
        reader.present("A1", token)
        await first.until(has("locker.unlocked", "A1"))
        reader.present("A1", token)
        await first.until(has("access.denied", "A1"))
    async with running(site) as second:
        reader.present("A1", token)
        await second.until(has("access.denied", "A1"))

    assert counted_when_recorded == [1]
    decisions = [(e.type, e.fields["reason"]) for run in (first, second) for e in run.events
                 if e.type.startswith("access.")]
    assert decisions == [("access.granted", "granted"), ("access.denied", "used_up"),
                         ("access.denied", "used_up")]
    assert [s.state for s in first.factory.pin(17).states] == [False, True, False]
    assert [s.state for s in second.factory.pin(17).states] == [False]


async def test_maintainer_runs_audit_mode_from_the_reader(
    offline_site: VirtualSite, reader: PtyBadgeReader
) -> None:
    site = offline_site
    with site.config_path.open("a", encoding="utf-8") as fh:
        fh.write("\n[access]\naudit_interval_s = 0.5\n")
    async with running(site) as h:
        reader.present("!audit", site.badge("bo", groups=("hand-tools",)))
        await h.until(has("access.denied", "!audit"))
        reader.present("!audit", site.badge("mia", permissions=("audit",)))
        await h.until(has("audit_mode.finished"))
    trail = [(e.type, e.fields.get("compartment"), e.fields.get("reason"))
             for e in h.events if e.event_class is EventClass.AUDIT]
    assert trail == [
        ("access.denied", "!audit", "not_granted"),
        ("access.granted", "!audit", "granted"),
        ("audit_mode.started", None, None),
        ("access.granted", "A1", "granted"),
        ("access.granted", "B1", "granted"),
        ("audit_mode.finished", None, None),
    ]
    assert {e.fields.get("member") for e in h.events
            if e.type.startswith("audit_mode") or e.fields.get("via") == "audit"} == {"mia"}
    for pin in (17, 22):
        assert [s.state for s in h.factory.pin(pin).states] == [False, True, False]


async def test_trust_bundle_rotates_issuer_keys_and_never_rolls_back(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    root = init_issuer(site.directory / "root", name="elm-street-root")
    with site.config_path.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[[trust.root_keys]]\nkid = "{root.kid}"\npublic_key = "{root.public_key}"\n')
    new = init_issuer(site.directory / "issuer-2027", name="elm-street-coop")
    now = int(time.time())

    def bundle(version: int, *keys: dict[str, object]) -> bytes:
        return issue_trust_bundle(root.key, kid=root.kid, issuer=root.name, site=SITE,
                                  version=version, now=now, issuer_keys=list(keys)).encode()

    old_key = {"kid": site.issuer.kid, "key": site.issuer.public_key, "exp": now - 60}
    new_key = {"kid": new.kid, "key": new.public_key, "nbf": now - 3600}
    new_badge = issue_badge(new.key, kid=new.kid, issuer=new.name, member="ada", site=SITE,
                            now=now, lifetime_s=3600, groups=("hand-tools",))
    old_badge = site.badge("bo", groups=("hand-tools",))
    topic = f"curbside/v1/{SITE}/trust"
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="platform-trust")
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    try:
        async with running(site) as before:
            reader.present("A1", new_badge)
            await before.until(has("access.denied", "A1"))
        publisher.publish(topic, bundle(2, old_key, new_key), qos=1,
                          retain=True).wait_for_publish(5)
        async with running(site) as during:
            await during.until(has("trust.applied"))
            reader.present("A1", new_badge)
            reader.present("A1", old_badge)
            await during.until(has("access.denied", "A1"))
            publisher.publish(topic, bundle(1, new_key), qos=1, retain=True).wait_for_publish(5)
            await during.until(has("trust.refused"))
            publisher.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)  # clears
            publisher.publish(topic, b"garbage", qos=1).wait_for_publish(5)
            async with asyncio.timeout(10):  # refused again, but the alarm is rate-limited
                while during.agent.documents.suppressed("trust") < 1:  # noqa: ASYNC110  # no event: a suppressed alarm records nothing
                    await asyncio.sleep(0.01)
            state = await during.agent.snapshot()
        async with running(site) as after:  # installed for good: no broker message needed
            reader.present("A1", new_badge)
            await after.until(has("locker.unlocked", "A1"))
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    assert [e.fields["reason"] for e in before.events if e.type == "access.denied"] \
        == ["unknown_key"]
    assert [(e.type, e.fields["reason"]) for e in during.events if e.type.startswith("access")] \
        == [("access.granted", "granted"), ("access.denied", "key_not_valid")]
    [refused] = [e for e in during.events if e.type == "trust.refused"]  # one alarm a minute
    assert (refused.fields["outcome"], refused.fields["held_version"]) == ("rollback", 2)
    assert refused.event_class is EventClass.ALARM
    assert state["trust_version"] == 2
    assert after.agent.trust.version == 2


async def test_a_clock_set_back_is_flagged_and_only_untrusted_time_badges_open(
    offline_site: VirtualSite, reader: PtyBadgeReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Pi without RTC after a power cut: its clock reads a day behind the saved floor."""
    site = offline_site
    monkeypatch.setitem(TrustedClock.__init__.__kwdefaults__, "synchronised", lambda: False)
    floor = time.time() + 86400
    (site.directory / "time.floor").write_text(f"{floor:.3f}\n", encoding="ascii")
    valid = int(floor) - 60  # badges issued at the true time, which the floor tracks
    async with running(site) as h:
        reader.present("A1", site.badge("ada", groups=("hand-tools",), not_before=valid))
        reader.present("A1", site.badge("eve", groups=("hand-tools",), not_before=valid,
                                        allows_untrusted_time=True))
        await h.until(has("locker.unlocked", "A1"))
    decisions = [e for e in h.events if e.type.startswith("access.")]
    assert [(e.type, e.fields["reason"]) for e in decisions] == [
        ("access.denied", "clock_untrusted"), ("access.granted", "granted")]
    assert all(e.tq == "untrusted" for e in h.events)
    assert all(e.ts >= floor for e in decisions)  # stamped with the floor, not the wall clock


async def test_a_use_that_cannot_be_recorded_is_refused(
    offline_site: VirtualSite, reader: PtyBadgeReader
) -> None:
    """Fail closed: an unrecorded use could be used again, so the scan is refused."""
    site = offline_site
    token = site.badge("ada", groups=("hand-tools",), use_limit=3)
    async with running(site) as h:
        blocker = sqlite3.connect(site.directory / "uses.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # e.g. an operator's sqlite3 shell mid-write
        try:
            reader.present("A1", token)
            await h.until(has("access.denied", "A1"))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        reader.present("A1", token)
        await h.until(has("locker.unlocked", "A1"))
    decisions = [(e.type, e.fields["reason"]) for e in h.events if e.type.startswith("access.")]
    assert decisions == [("access.denied", "storage_fault"), ("access.granted", "granted")]
    [fault] = [e for e in h.events if e.type == "storage.fault"]
    assert (fault.fields["store"], fault.event_class) == ("uses", EventClass.ALARM)
