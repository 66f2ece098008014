"""Signed platform commands end to end: open, set_time; unsigned, replayed, misaddressed
and expired commands refused with a reason in the reply and an event."""

from __future__ import annotations

import asyncio
import json
import time
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


async def test_signed_commands_act_once_and_bad_ones_are_refused(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    trust_operator(site)
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
    topic = f"curbside/v1/elm-street/{DEVICE}/cmd"

    async def ask(payload: bytes) -> dict[str, Any]:
        platform.publish(topic, payload, qos=1)
        return await asyncio.wait_for(replies.get(), 10)

    try:
        await asyncio.wait_for(ready, 5)
        async with running(site) as h:
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
    finally:
        platform.disconnect()
        platform.loop_stop()

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
