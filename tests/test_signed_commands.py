"""Signed platform commands end to end: open, set_time; unsigned, replayed, misaddressed
and expired commands refused with a reason in the reply and an event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from provisioning.commands import issue_command
from provisioning.keys import public_key_b64
from simulators.badge_reader import PtyBadgeReader
from simulators.broker import MosquittoBroker
from simulators.site import DEVICE, VirtualSite
from tests.test_agent import has, running

OPERATOR_KEY = Ed25519PrivateKey.generate()


def trust_operator(site: VirtualSite) -> None:
    with site.config_path.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[[trust.command_keys]]\nkid = "ops-1"\n'
                 f'public_key = "{public_key_b64(OPERATOR_KEY.public_key())}"\n')


def command(name: str, *, device: str = DEVICE, now: int | None = None,
            **args: Any) -> bytes:
    return issue_command(OPERATOR_KEY, kid="ops-1", operator="ops@coop", device=device,
                         name=name, now=int(time.time()) if now is None else now,
                         args=args).encode()


Ask = Callable[[bytes], Awaitable[dict[str, Any]]]


@contextlib.asynccontextmanager
async def console(broker: MosquittoBroker) -> AsyncIterator[Ask]:
    """An operator's MQTT client: publish a request, await the reply on …/cmd/result."""
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    ready: asyncio.Future[None] = loop.create_future()
    platform = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ops-console")
    platform.on_connect = lambda c, u, f, rc, p: c.subscribe(
        f"curbside/v1/elm-street/{DEVICE}/cmd/result", qos=1)
    platform.on_subscribe = lambda c, u, m, rc, p: loop.call_soon_threadsafe(
        lambda: ready.done() or ready.set_result(None))
    platform.on_message = lambda c, u, m: loop.call_soon_threadsafe(
        replies.put_nowait, json.loads(m.payload))
    platform.connect(broker.host, broker.port)
    platform.loop_start()

    async def ask(payload: bytes) -> dict[str, Any]:
        platform.publish(f"curbside/v1/elm-street/{DEVICE}/cmd", payload, qos=1)
        return await asyncio.wait_for(replies.get(), 10)

    try:
        await asyncio.wait_for(ready, 5)
        yield ask
    finally:
        platform.disconnect()
        platform.loop_stop()


async def test_signed_commands_act_once_and_bad_ones_are_refused(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    trust_operator(site)
    async with console(broker) as ask, running(site) as h:
        await asyncio.wait_for(h.agent.link.wait_subscribed(), 10)
        opening = command("open", compartment="A1")
        opened = await ask(opening)
        replayed = await ask(opening)
        unsigned = await ask(json.dumps({"command": "open", "id": "u1",
                                         "args": {"compartment": "A1"}}).encode())
        elsewhere = await ask(command("open", device="lockers-9", compartment="A1"))
        stale = await ask(command("open", now=int(time.time()) - 3600, compartment="A1"))
        timed = await ask(command("set_time"))
        await h.until(lambda ev: sum(e.type == "command.rejected" for e in ev) == 4)

    assert opened["ok"] is True
    assert opened["result"]["compartment"] == "A1"
    assert [s.state for s in h.factory.pin(17).states] == [False, True, False]  # once
    assert replayed["error"].startswith("replayed")
    assert unsigned["error"].startswith("unsigned")
    assert elsewhere["error"].startswith("wrong_device")
    assert stale["error"].startswith("expired")
    assert timed["ok"] is True
    assert timed["result"]["quality"] == "synchronised"
    granted = [e for e in h.events if e.type == "access.granted"]
    assert granted[0].fields == {"compartment": "A1", "reason": "granted", "via": "remote",
                                 "operator": "ops@coop", "prev": granted[0].fields["prev"]}
    reasons = [e.fields["reason"] for e in h.events if e.type == "command.rejected"]
    assert reasons == ["replayed", "unsigned", "wrong_device", "expired"]
    assert has("time.set")(h.events)


async def test_replayed_command_is_refused_after_restart(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    """The replay cache is on disk: a captured command cannot act again after a restart."""
    trust_operator(site)
    opening = command("open", compartment="A1")
    async with console(broker) as ask:
        async with running(site) as first:
            await asyncio.wait_for(first.agent.link.wait_subscribed(), 10)
            assert (await ask(opening))["ok"] is True
        async with running(site) as second:
            await asyncio.wait_for(second.agent.link.wait_subscribed(), 10)
            replayed = await ask(opening)
            await second.until(has("command.rejected"))
    assert replayed["ok"] is False
    assert replayed["error"].startswith("replayed")
    [rejected] = [e for e in second.events if e.type == "command.rejected"]
    assert rejected.fields["reason"] == "replayed"
    assert [s.state for s in first.factory.pin(17).states] == [False, True, False]
    assert [s.state for s in second.factory.pin(17).states] == [False]


async def test_audit_command_opens_every_door_in_turn(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    trust_operator(site)
    with site.config_path.open("a", encoding="utf-8") as fh:
        fh.write("\n[access]\naudit_interval_s = 0.5\n")
    async with console(broker) as ask, running(site) as h:
        await asyncio.wait_for(h.agent.link.wait_subscribed(), 10)
        reply = await ask(command("audit"))
    assert reply["ok"] is True
    assert reply["result"] == {"opened": ["A1", "B1"]}
    audit = [(e.type, e.fields.get("compartment")) for e in h.events
             if e.type.startswith(("audit_mode", "access", "locker."))]
    assert audit == [("audit_mode.started", None), ("access.granted", "A1"),
                     ("locker.unlocked", "A1"), ("access.granted", "B1"),
                     ("locker.unlocked", "B1"), ("audit_mode.finished", None)]
    assert all(e.fields.get("operator") == "ops@coop" for e in h.events
               if e.type.startswith("audit_mode"))
    a1_off = h.factory.pin(17).states[-1].timestamp
    b1_on = h.factory.pin(22).states[1].timestamp
    assert b1_on - a1_off >= 0.4  # one door after the other, the interval apart


async def test_set_config_changes_remote_items_persistently_and_refuses_others(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    trust_operator(site)
    level_one = site.badge("cleo", groups=("batteries",), skills={"battery-handling": 1})
    async with console(broker) as ask:
        async with running(site) as first:
            await asyncio.wait_for(first.agent.link.wait_subscribed(), 10)
            changed = await ask(command("set_config", items={
                "compartments.B1.skills": {"battery-handling": 2}, "access.lockout_s": 30}))
            not_remote = await ask(command("set_config", items={"mqtt.host": "evil.example"}))
            bad_value = await ask(command("set_config", items={"access.lockout_s": -1}))
            reader.present("B1", level_one)
            await first.until(has("access.denied", "B1"))
        async with running(site) as second:
            reader.present("B1", level_one)
            await second.until(has("access.denied", "B1"))
            state = await second.agent.snapshot()
    assert changed["ok"] is True
    assert changed["result"]["applied"] == {"compartments.B1.skills": {"battery-handling": 2},
                                            "access.lockout_s": 30.0}
    assert not_remote["ok"] is False
    assert "mqtt.host: not a remote item" in not_remote["error"]
    assert bad_value["ok"] is False
    assert "access.lockout_s" in bad_value["error"]
    [event] = [e for e in first.events if e.type == "config.changed"]
    assert event.fields["before"] == {"compartments.B1.skills": {"battery-handling": 1},
                                      "access.lockout_s": 120.0}
    assert event.fields["operator"] == "ops@coop"
    for run in (first, second):
        [denied] = [e for e in run.events if e.type == "access.denied"]
        assert denied.fields["missing_badges"] == {"battery-handling": 2}
    assert state["remote_config"] == {"access.lockout_s": 30,
                                      "compartments.B1.skills": {"battery-handling": 2}}


async def test_a_signed_time_behind_the_floor_is_refused(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    """A captured set_time replayed later (new nonce or not) cannot pull the time back."""
    trust_operator(site)
    async with console(broker) as ask, running(site) as h:
        await asyncio.wait_for(h.agent.link.wait_subscribed(), 10)
        floor = h.agent.clock.floor
        stale = await ask(command("set_time", now=int(floor) - 3600))
    assert stale["ok"] is False
    assert stale["error"].startswith("stale_time")
    assert h.agent.clock.floor >= floor
    assert not any(e.type == "time.set" for e in h.events)
