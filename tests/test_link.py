"""The MQTT link against a real Mosquitto: PUBACK, birth and LWT, outage and return,
reconnects that back off when connections are dropped; and the reconnect policy alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edge.backoff import STABLE_AFTER_MIN_S, ReconnectBackoff, backoff_delay, stable_after_s
from edge.config import MqttConfig
from edge.link import LinkDown, LinkState, MqttLink
from edge.topics import DeviceTopics
from simulators.broker import MosquittoBroker
from simulators.tcp_proxy import FaultyProxy

TOPICS = DeviceTopics("elm-street", "lockers-1")
BASE_S = 0.05  # reconnect_min_s of these tests
# Links whose connections are dropped at once are watched this long, their cap far above
# it so the backoff window doubles throughout. Reconnecting straight away after each drop
# made over 1,000 connections a link in that time.
WATCH_S = 2.0


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


def mqtt_config(broker: MosquittoBroker, protocol: str = "5", *, port: int | None = None,
                reconnect_max_s: float = 0.5) -> MqttConfig:
    return MqttConfig(host=broker.host, port=port or broker.port,
                      protocol=protocol,  # type: ignore[arg-type]  # "5" or "3.1.1" here
                      allow_insecure=True, reconnect_min_s=BASE_S,
                      reconnect_max_s=reconnect_max_s)


class LinkStates:
    """Every state some links reported, as (link name, state, monotonic instant); waiters
    re-check their condition after each report."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, LinkState, float]] = []
        self._changed = asyncio.Event()

    def recorder(self, name: str = "link") -> Callable[[LinkState, str], None]:
        def record(state: LinkState, _detail: str) -> None:
            self.reports.append((name, state, time.monotonic()))
            self._changed.set()

        return record

    def times(self, state: LinkState, name: str | None = None) -> list[float]:
        return [at for who, s, at in self.reports if s is state and name in (None, who)]

    async def until(self, condition: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


class TopOfWindow(random.Random):
    """Jitter that always waits as long as the window allows: the slowest the policy can be."""

    def uniform(self, a: float, b: float) -> float:
        return b


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


async def test_two_devices_with_one_client_id_back_off_instead_of_taking_turns_in_a_hot_loop(
    broker: MosquittoBroker,
) -> None:
    # A cloned SD card: one client id, so each connection takes the other's session over
    # and each link is dropped whenever the other connects. The links take turns, so the
    # 2 s hold the waits of both, with windows of 0.05, 0.05, 0.1, 0.1, 0.2, 0.2... s: more
    # than 20 connections would need the last few waits all near 0 (far below 1e-6).
    states = LinkStates()
    config = mqtt_config(broker, reconnect_max_s=60.0)
    clones = [MqttLink(config, TOPICS, boot_id=f"clone-{name}", on_state=states.recorder(name))
              for name in "ab"]
    async with running(clones[0]), running(clones[1]):
        # Each has lost its session to the other and come back at least once.
        await states.until(lambda: all(len(states.times(LinkState.UP, name)) >= 2
                                       for name in "ab"), 10)
        start = min(states.times(LinkState.UP))
        await asyncio.sleep(max(0.0, start + WATCH_S - time.monotonic()))  # the whole window
        made = sum(at < start + WATCH_S for at in states.times(LinkState.UP))
        assert made <= 20
        assert all(clone.backoff.attempt >= 2 for clone in clones)  # each drop widened it


async def test_a_broker_that_drops_each_connection_once_up_is_retried_with_growing_delays(
    broker: MosquittoBroker,
) -> None:
    # One link alone, waits of 0.05, 0.1, 0.2, 0.4... s: 12 connections in 2 s would need
    # eleven waits summing under 2 s, the last three from windows of 12.8 s and more.
    states = LinkStates()
    record = states.recorder()
    loop = asyncio.get_running_loop()
    async with FaultyProxy(broker.port) as proxy:
        def drop_once_up(state: LinkState, detail: str) -> None:
            record(state, detail)
            if state is LinkState.UP:
                loop.call_soon(proxy.cut)  # accepted, acknowledged, then dropped

        link = MqttLink(mqtt_config(broker, port=proxy.port, reconnect_max_s=60.0), TOPICS,
                        boot_id="b6", on_state=drop_once_up)
        async with running(link):
            await states.until(lambda: len(states.times(LinkState.UP)) >= 3, 10)
            start = states.times(LinkState.UP)[0]
            await asyncio.sleep(max(0.0, start + WATCH_S - time.monotonic()))
            made = sum(at < start + WATCH_S for at in states.times(LinkState.UP))
            assert 3 <= made <= 11
            assert proxy.connections <= made + 1  # none behind the link's back
            ups = len(states.times(LinkState.UP))
            assert link.backoff.attempt >= ups - 1  # no connection counted as healthy


async def test_after_a_stable_connection_is_cut_the_link_is_back_within_the_first_window(
    broker: MosquittoBroker,
) -> None:
    # The slowest jitter: every wait is its whole window, so the timing is exact.
    backoff = ReconnectBackoff(BASE_S, 60.0, stable_after_s=0.5, rng=TopOfWindow())
    states = LinkStates()
    async with FaultyProxy(broker.port) as proxy:
        link = MqttLink(mqtt_config(broker, port=proxy.port), TOPICS, boot_id="b5",
                        on_state=states.recorder(), backoff=backoff)
        proxy.refuse()  # the broker unreachable at first: five failures widen the window
        async with running(link):
            await states.until(lambda: backoff.attempt >= 5, 10)
            proxy.admit()
            await asyncio.wait_for(link.wait_up(), 10)
            assert backoff.window_s == pytest.approx(1.6)  # where a reconnect would start
            await asyncio.sleep(backoff.stable_after_s + 0.1)  # up long enough: healthy
            cut_at = time.monotonic()
            proxy.cut()  # the whole street's Wi-Fi drops
            await states.until(lambda: any(at > cut_at for at in states.times(LinkState.UP)), 5)
            back_in = min(at for at in states.times(LinkState.UP) if at > cut_at) - cut_at
            assert back_in < 1.0  # a 0.05 s wait and the connect: not the 1.6 s window
            assert backoff.attempt == 1


async def test_a_stopped_link_is_closed_connected_or_not(broker: MosquittoBroker) -> None:
    states = LinkStates()
    link = MqttLink(mqtt_config(broker), TOPICS, boot_id="b7", on_state=states.recorder())
    async with running(link):
        await asyncio.wait_for(link.wait_up(), 5)
    assert link.state is LinkState.CLOSED
    assert [s for _, s, _ in states.reports][-2:] == [LinkState.UP, LinkState.CLOSED]
    broker.stop()
    async with running(link):
        await states.until(lambda: states.reports[-1][1] is LinkState.DOWN, 5)
    assert link.state is LinkState.CLOSED


# The reconnect policy alone --------------------------------------------------------------

def test_a_connection_is_stable_after_twice_the_keepalive_but_never_under_the_floor() -> None:
    assert stable_after_s(5) == STABLE_AFTER_MIN_S == 10.0
    assert stable_after_s(30) == 60.0


@pytest.mark.parametrize(("base_s", "cap_s", "stable_s"), [(0.0, 1.0, 1.0), (2.0, 1.0, 1.0),
                                                             (0.5, 1.0, -1.0)])
def test_an_impossible_backoff_is_refused(base_s: float, cap_s: float, stable_s: float) -> None:
    with pytest.raises(ValueError, match=r"base_s|stable_after_s"):
        ReconnectBackoff(base_s, cap_s, stable_s)


def test_a_street_cut_at_once_spreads_its_reconnects_over_the_first_window() -> None:
    devices = [ReconnectBackoff(0.5, 60.0, 10.0, rng=random.Random(i)) for i in range(1000)]
    delays = [device.after_loss(up_for_s=3600.0) for device in devices]
    assert all(0 <= d <= 0.5 for d in delays)
    assert max(delays) - min(delays) > 0.45
    assert sum(d < 0.1 for d in delays) < 300  # about 200: not all at once


events_strategy = st.lists(st.none() | st.floats(min_value=0, max_value=100), max_size=40)


@given(base_s=st.floats(min_value=0.001, max_value=60), cap_factor=st.floats(1, 1000),
       stable_s=st.floats(min_value=0, max_value=60), events=events_strategy,
       rng=st.randoms(use_true_random=False))
def test_reconnect_waits_stay_in_a_window_that_doubles_per_failure_until_a_stable_connection(
    base_s: float, cap_factor: float, stable_s: float, events: list[float | None],
    rng: random.Random,
) -> None:
    """``None``: an attempt to connect failed; a number: a connection lost after so long."""
    cap_s = base_s * cap_factor
    backoff = ReconnectBackoff(base_s, cap_s, stable_s, rng=rng)
    failures = 0
    for up_for_s in events:
        before = backoff.window_s
        delay = backoff.after_failure() if up_for_s is None else backoff.after_loss(up_for_s)
        stable = up_for_s is not None and up_for_s >= stable_s
        failures = 1 if stable else failures + 1
        window = base_s if stable else before
        assert 0 <= delay <= window <= cap_s
        assert backoff.window_s == min(cap_s, 2 * window)  # doubled, up to the cap
        assert backoff.attempt == failures
