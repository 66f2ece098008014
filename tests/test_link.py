"""The MQTT link against a real Mosquitto: PUBACK, birth and LWT, outage and return."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig
from edge.link import LinkDown, LinkState, MqttLink, backoff_delay
from edge.topics import DeviceTopics
from simulators.broker import MosquittoBroker

TOPICS = DeviceTopics("elm-street", "lockers-1")


class Subscriber:
    """An independent raw paho subscriber feeding an asyncio queue."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.messages: asyncio.Queue[tuple[str, Any, bool]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-subscriber")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self._loop.call_soon_threadsafe(
            lambda: self._ready.done() or self._ready.set_result(None))
        self.client.on_message = lambda c, u, m: self._loop.call_soon_threadsafe(
            self.messages.put_nowait, (m.topic, json.loads(m.payload), m.retain))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    async def ready(self) -> None:
        await asyncio.wait_for(self._ready, 5)

    async def next(self) -> tuple[str, Any, bool]:
        return await asyncio.wait_for(self.messages.get(), 10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_config(broker: MosquittoBroker, protocol: str = "5") -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, protocol=protocol,  # type: ignore[arg-type]
                      allow_insecure=True, reconnect_min_s=0.05, reconnect_max_s=0.5)


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(link.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_publish_returns_after_puback_and_a_subscriber_gets_it(
    broker: MosquittoBroker, protocol: str
) -> None:
    sub = Subscriber(broker, TOPICS.events)
    await sub.ready()
    link = MqttLink(mqtt_config(broker, protocol), TOPICS, boot_id="b1")
    try:
        async with running(link):
            await asyncio.wait_for(link.wait_up(), 5)
            await link.publish(TOPICS.events, b'{"n": 1}', qos=1)
            assert await sub.next() == (TOPICS.events, {"n": 1}, False)
    finally:
        sub.close()


async def test_birth_is_retained_and_goodbye_marks_offline(broker: MosquittoBroker) -> None:
    link = MqttLink(mqtt_config(broker), TOPICS, boot_id="boot-42")
    async with running(link):
        await asyncio.wait_for(link.wait_up(), 5)
        sub = Subscriber(broker, TOPICS.status)  # joins after the birth: gets the retained copy
        try:
            topic, body, retained = await sub.next()
            assert (topic, retained) == (TOPICS.status, True)
            assert body["online"] is True
            assert body["boot_id"] == "boot-42"
        finally:
            sub.close()
    sub = Subscriber(broker, TOPICS.status)
    try:
        _, body, retained = await sub.next()
        assert retained
        assert body == {"online": False, "boot_id": "boot-42"}
    finally:
        sub.close()


async def test_a_dropped_connection_fires_the_lwt_and_the_link_comes_back(
    broker: MosquittoBroker,
) -> None:
    states: list[LinkState] = []
    link = MqttLink(mqtt_config(broker), TOPICS, boot_id="b2",
                    on_state=lambda state, _detail: states.append(state))
    sub = Subscriber(broker, TOPICS.status)
    await sub.ready()
    try:
        async with running(link):
            await asyncio.wait_for(link.wait_up(), 5)
            assert (await sub.next())[1]["online"] is True
            assert link._conn is not None
            link._conn.abort()  # the socket dies without DISCONNECT, as in a crash
            assert (await sub.next())[1] == {"online": False, "boot_id": "b2"}  # the LWT
            assert (await sub.next())[1]["online"] is True  # reconnected, born again
            assert states.count(LinkState.UP) == 2
    finally:
        sub.close()


async def test_starts_without_a_broker_and_connects_when_it_appears(
    broker: MosquittoBroker,
) -> None:
    broker.stop()
    link = MqttLink(mqtt_config(broker), TOPICS, boot_id="b3")
    async with running(link):
        with pytest.raises(LinkDown):
            await link.publish(TOPICS.events, b"{}")
        assert link.state in (LinkState.CONNECTING, LinkState.DOWN)
        broker.start()
        await asyncio.wait_for(link.wait_up(), 10)
        await link.publish(TOPICS.events, b"{}")


async def test_losing_the_broker_is_noticed_and_publishing_refuses(
    broker: MosquittoBroker,
) -> None:
    lost = asyncio.Event()
    link = MqttLink(mqtt_config(broker), TOPICS, boot_id="b4",
                    on_state=lambda state, _detail: state is LinkState.DOWN and lost.set())
    async with running(link):
        await asyncio.wait_for(link.wait_up(), 5)
        broker.stop()
        await asyncio.wait_for(lost.wait(), 5)
        with pytest.raises(LinkDown):
            await link.publish(TOPICS.events, b"{}")


def test_backoff_is_full_jitter_within_a_capped_window() -> None:
    delays = [backoff_delay(attempt, 0.5, 8.0) for attempt in range(12) for _ in range(50)]
    assert all(0 <= d <= 8.0 for d in delays)
    late = [backoff_delay(10, 0.5, 8.0) for _ in range(200)]
    assert max(late) > 4.0
    assert min(late) < 4.0
