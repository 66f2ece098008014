"""The AsyncAPI document is generated from the payload models, and real payloads captured
at the broker from a running agent validate against it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge.asyncapi import build_document, render
from edge.outbox import EventClass
from simulators.badge_reader import PtyBadgeReader
from simulators.broker import MosquittoBroker
from simulators.site import VirtualSite
from tests.test_agent import has, running

DOC = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"
SCHEMA_FOR_TOPIC = {"status": "Status", "events": "EventBatch", "telemetry": "EventBatch",
                    "state": "StateSnapshot", "cmd/result": "CommandReply"}


def test_committed_document_matches_the_models() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), \
        "docs/asyncapi.json is stale: run python -m edge.asyncapi > docs/asyncapi.json"


def validate(document: dict[str, Any], schema_name: str, payload: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}", **document}
    jsonschema.Draft202012Validator(schema).validate(payload)


async def test_real_payloads_validate_against_the_document(
    site: VirtualSite, reader: PtyBadgeReader, broker: MosquittoBroker
) -> None:
    loop = asyncio.get_running_loop()
    captured: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue()
    ready: asyncio.Future[None] = loop.create_future()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="contract",
                      protocol=MQTTProtocolVersion.MQTTv5)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("curbside/v1/elm-street/#", qos=1)
    sub.on_subscribe = lambda c, u, m, rc, p: loop.call_soon_threadsafe(
        lambda: ready.done() or ready.set_result(None))
    sub.on_message = lambda c, u, m: loop.call_soon_threadsafe(captured.put_nowait, m)
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    seen: dict[str, list[mqtt.MQTTMessage]] = {}
    try:
        await asyncio.wait_for(ready, 5)
        async with running(site) as h:
            await asyncio.wait_for(h.agent.link.wait_subscribed(), 10)
            reader.present("A1", site.badge("ada", groups=("hand-tools",)))
            await h.until(has("door.closed", "A1"))
            await h.agent.outbox.append("sensor.minute", {"sensor": "pm25", "mean": 7.5},
                                        event_class=EventClass.TELEMETRY)
            sub.publish(h.agent.topics.cmd, json.dumps({"command": "ping", "id": "c1"}), qos=1)
            wanted = set(SCHEMA_FOR_TOPIC)
            async with asyncio.timeout(15):
                while not wanted <= set(seen):
                    message = await captured.get()
                    suffix = message.topic.split("lockers-1/", 1)[1]
                    seen.setdefault(suffix, []).append(message)
    finally:
        sub.disconnect()
        sub.loop_stop()

    document = build_document()
    for suffix, messages in seen.items():
        if suffix == "cmd":
            continue  # our own request
        for message in messages:
            validate(document, SCHEMA_FOR_TOPIC[suffix], json.loads(message.payload))
    telemetry = seen["telemetry"][0]
    assert telemetry.properties.MessageExpiryInterval > 0
    assert ("schema", "1") in telemetry.properties.UserProperty
    assert json.loads(telemetry.payload)["events"][0]["class"] == "telemetry"
    audit = [e for m in seen["events"] for e in json.loads(m.payload)["events"]
             if e["class"] == "audit"]
    assert audit
    assert all(len(e["prev"]) == 64 for e in audit)
