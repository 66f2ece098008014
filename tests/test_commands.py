"""Commands over MQTT: ping with an MQTT 5 response topic, the 3.1.1 result topic,
retained and repeated requests, malformed ones; and the MQTT 5 publish properties."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.commands import Commands
from edge.config import MqttConfig
from edge.link import MqttLink
from edge.topics import DeviceTopics
from simulators.broker import MosquittoBroker

TOPICS = DeviceTopics("elm-street", "lockers-1")


class Platform:
    """A raw paho client acting as the platform, MQTT 5 or 3.1.1."""

    def __init__(self, broker: MosquittoBroker, *, v5: bool, subscribe: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"platform-{v5}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(subscribe, qos=1)
        self.client.on_subscribe = lambda c, u, m, rc, p: self.loop.call_soon_threadsafe(
            lambda: self.ready.done() or self.ready.set_result(None))
        self.client.on_message = lambda c, u, m: self.loop.call_soon_threadsafe(
            self.inbox.put_nowait, m)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, body: dict[str, Any] | bytes, *, response_topic: str | None = None,
             correlation: bytes | None = None, retain: bool = False) -> None:
        props = None
        if response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            props.CorrelationData = correlation
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.client.publish(TOPICS.cmd, payload, qos=1, retain=retain, properties=props)

    async def next(self) -> mqtt.MQTTMessage:
        return await asyncio.wait_for(self.inbox.get(), 10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.asynccontextmanager
async def device(
    broker: MosquittoBroker, protocol: str
) -> AsyncIterator[tuple[MqttLink, Commands]]:
    config = MqttConfig(host=broker.host, port=broker.port, protocol=protocol,  # type: ignore[arg-type]
                        allow_insecure=True, reconnect_min_s=0.05, reconnect_max_s=0.5)
    commands: Commands | None = None
    link = MqttLink(config, TOPICS, boot_id="boot-7", subscriptions=(TOPICS.cmd,),
                    on_message=lambda m: commands.on_message(m) if commands else None)
    commands = Commands(link, TOPICS, boot_id="boot-7")
    tasks = [asyncio.ensure_future(link.run()), asyncio.ensure_future(commands.run())]
    try:
        await asyncio.wait_for(link.wait_subscribed(), 5)  # requests will reach us
        yield link, commands
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_ping_replies_to_the_mqtt5_response_topic_with_correlation(
    broker: MosquittoBroker,
) -> None:
    platform = Platform(broker, v5=True, subscribe="platform/replies/#")
    try:
        await asyncio.wait_for(platform.ready, 5)
        async with device(broker, "5"):
            platform.send({"command": "ping", "id": "r1"}, response_topic="platform/replies/1",
                          correlation=b"corr-1")
            reply = await platform.next()
    finally:
        platform.close()
    body = json.loads(reply.payload)
    assert reply.topic == "platform/replies/1"
    assert reply.properties.CorrelationData == b"corr-1"
    assert ("schema", "1") in reply.properties.UserProperty
    assert body["ok"] is True
    assert body["id"] == "r1"
    assert body["result"]["boot_id"] == "boot-7"


async def test_ping_on_311_replies_to_the_result_topic(broker: MosquittoBroker) -> None:
    platform = Platform(broker, v5=False, subscribe=TOPICS.cmd_result)
    try:
        await asyncio.wait_for(platform.ready, 5)
        async with device(broker, "3.1.1"):
            platform.send({"command": "ping", "id": "r2"})
            reply = await platform.next()
    finally:
        platform.close()
    assert json.loads(reply.payload)["id"] == "r2"


async def test_retained_malformed_unknown_and_repeated_requests(broker: MosquittoBroker) -> None:
    platform = Platform(broker, v5=False, subscribe=TOPICS.cmd_result)
    try:
        await asyncio.wait_for(platform.ready, 5)
        platform.send({"command": "ping", "id": "stale"}, retain=True)  # before the device
        async with device(broker, "5") as (_link, commands):
            platform.send(b"{not json")
            platform.send({"command": "launch", "id": "u1"})
            unknown = json.loads((await platform.next()).payload)
            platform.send({"command": "ping", "id": "p1"})
            first = json.loads((await platform.next()).payload)
            platform.send({"command": "ping", "id": "p1"})
            again = json.loads((await platform.next()).payload)
            assert commands.ignored_retained == 1
            assert commands.rejected == 1
    finally:
        platform.client.publish(TOPICS.cmd, b"", qos=1, retain=True)  # clear the retained one
        platform.close()
    assert unknown == {"id": "u1", "command": "launch", "ok": False,
                       "error": "unknown command 'launch'"}
    assert again == first  # answered from memory: a repeated id never acts twice
