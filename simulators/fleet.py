"""A fleet of simulated Curbside devices against one broker, all in one process and loop.

Simulator layer. Each device is the agent's own :class:`edge.link.MqttLink` (birth and
LWT, capped exponential backoff with full jitter, PUBACK-acknowledged publishing) plus an
optional telemetry publisher, so the fleet exercises the code the agent runs. It is for
the platform side (many devices publishing at once) and for reconnect storms: what a
broker restart does when every device comes back::

    async with Fleet(broker.host, broker.port, 200, reconnect_max_s=10) as fleet:
        await fleet.wait_connected(timeout_s=30)
        back_at = await restart_broker(fleet, broker)
        report = fleet.storm_report(back_at)

Every device records the monotonic instants its link came up, failed to connect and was
lost; :func:`analyse_storm` turns the delays after a broker restart into a
:class:`StormReport` and is a pure function, so it is tested on its own.

What is shared here and not on a real site: the link's blocking TCP connect runs in the
event loop's default executor (``min(32, cpus + 4)`` threads), so that pool paces how many
devices can be mid-connect at once; and the whole fleet shares one CPU-bound loop. Each
connected device holds one socket (paho's wake-up socket pair is made only by its own
``loop()``, which the link never calls), so ``ulimit -n`` must exceed the fleet size with
room to spare. No thread is started per device; on exit every link says goodbye (retained
``online: false``) and closes its socket.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from edge.config import MqttConfig
from edge.link import LinkDown, LinkState, MqttLink, PublishRejected
from edge.topics import DeviceTopics
from simulators.broker import MosquittoBroker


@dataclass(frozen=True)
class StormReport:
    """How a fleet came back after its broker did; every time is seconds after the broker.

    ``first_s``, ``duration_s`` (to the last device), ``p50_s`` and ``p90_s`` are over all
    ``devices``, a device that has not reconnected counting as never: ``math.inf`` when too
    few came back. Percentiles are nearest-rank (a delay some device actually had).
    ``peak_rate_per_s`` is the most reconnects in any sliding window of ``window_s``
    (half-open ``[t, t + window_s)``), divided by ``window_s``.
    """

    devices: int
    reconnected: int
    first_s: float
    duration_s: float
    peak_rate_per_s: float
    p50_s: float
    p90_s: float
    window_s: float = 1.0

    @property
    def complete(self) -> bool:
        return self.reconnected == self.devices


def peak_count(times: Sequence[float], window_s: float) -> int:
    """The most of ``times`` (any order, seconds) inside one window ``[t, t + window_s)``."""
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    ordered = sorted(times)
    # A window holding the most can always start at one of the times.
    return max((bisect.bisect_left(ordered, t + window_s) - i for i, t in enumerate(ordered)),
               default=0)


def nearest_rank(delays: Sequence[float], devices: int, percent: int) -> float:
    """The ``percent``-th percentile (1..100, nearest rank) of ``delays`` over ``devices``,
    a device without a delay counting as ``math.inf``."""
    if not 1 <= percent <= 100:
        raise ValueError("percent is 1..100")
    rank = -(-percent * devices // 100)  # ceil, in integers: 0.9 * 70 is 63.00000000000001
    ordered = sorted(delays)
    return ordered[rank - 1] if rank <= len(ordered) else math.inf


def analyse_storm(delays_s: Sequence[float], devices: int, *,
                  window_s: float = 1.0) -> StormReport:
    """Summarise a reconnect storm from each reconnected device's delay after the broker
    came back (seconds, one per device, any order). Raise ``ValueError`` if there are more
    delays than devices, a delay is negative or not finite, or ``devices < 1``."""
    if devices < 1:
        raise ValueError("a storm needs at least one device")
    if len(delays_s) > devices:
        raise ValueError(f"{len(delays_s)} reconnects from {devices} devices")
    if any(not (math.isfinite(d) and d >= 0) for d in delays_s):
        raise ValueError("delays are finite, non-negative seconds")
    return StormReport(
        devices=devices,
        reconnected=len(delays_s),
        first_s=min(delays_s, default=math.inf),
        duration_s=nearest_rank(delays_s, devices, 100),
        peak_rate_per_s=peak_count(delays_s, window_s) / window_s,
        p50_s=nearest_rank(delays_s, devices, 50),
        p90_s=nearest_rank(delays_s, devices, 90),
        window_s=window_s,
    )


class SimulatedDevice:
    """One device of the fleet: the agent's MQTT link and a record of what befell it.

    ``connects``, ``failures`` and ``drops`` are ``time.monotonic()`` instants at which
    the link came up, an attempt to connect failed, and an established connection was lost.
    """

    def __init__(self, config: MqttConfig, topics: DeviceTopics,
                 on_change: Callable[[], None]) -> None:
        self.topics = topics
        self.name = topics.device
        self.connects: list[float] = []
        self.failures: list[float] = []
        self.drops: list[float] = []
        self.telemetry_sent = 0  # acknowledged by the broker
        self.telemetry_failed = 0  # connection lost before PUBACK (sent again later)
        self._previous = LinkState.DOWN
        self._on_change = on_change
        self.link = MqttLink(config, topics, boot_id=uuid.uuid4().hex, on_state=self._on_state)

    @property
    def is_up(self) -> bool:
        return self.link.state is LinkState.UP

    def _on_state(self, state: LinkState, detail: str) -> None:
        now = time.monotonic()
        if state is LinkState.UP:
            self.connects.append(now)
        elif state is LinkState.DOWN:
            (self.drops if self._previous is LinkState.UP else self.failures).append(now)
        self._previous = state
        self._on_change()

    def first_connect_since(self, since: float) -> float | None:
        return next((t for t in self.connects if t >= since), None)

    async def publish_telemetry(self, interval_s: float) -> None:
        """One telemetry event every ``interval_s`` at QoS 1, its ``seq`` kept until the
        broker acknowledges it (at-least-once, like the agent's outbox). Runs until
        cancelled; the first comes at a random phase so devices do not publish in step."""
        await asyncio.sleep(random.uniform(0, interval_s))  # noqa: S311  # phase, not crypto
        seq = 1
        while True:
            await self.link.wait_up()
            event = {"seq": seq, "ts": round(time.time(), 3), "tq": "synchronised",
                     "type": "fleet.heartbeat", "class": "telemetry"}
            body = json.dumps({"device": self.name, "events": [event]}, separators=(",", ":"))
            try:
                await self.link.publish(self.topics.telemetry, body.encode(), qos=1,
                                        expiry_s=self.link.telemetry_expiry_s)
            except (LinkDown, PublishRejected):
                self.telemetry_failed += 1
            else:
                self.telemetry_sent += 1
                seq += 1
            self._on_change()
            await asyncio.sleep(interval_s)


class Fleet:
    """``n`` simulated devices ``dev-0001``... of one site, each running the agent's link.

    An async context manager: entering starts every link (and telemetry publisher, if
    ``telemetry_interval_s`` is positive) as named tasks of one ``TaskGroup``; leaving
    cancels them, each link saying goodbye within the link's own bound. A device whose
    task fails takes the fleet down with it. Client ids are ``curbside-<site>-<device>``:
    two fleets (or a fleet and an agent) on one broker need distinct sites, or they take
    over each other's sessions.
    """

    def __init__(self, host: str, port: int, n: int, *, site: str = "fleet",
                 protocol: Literal["5", "3.1.1"] = "5", keepalive_s: int = 30,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 60.0,
                 telemetry_interval_s: float | None = None) -> None:
        if n < 1:
            raise ValueError("a fleet has at least one device")
        if telemetry_interval_s is not None and telemetry_interval_s < 0:
            raise ValueError("telemetry_interval_s is seconds (0 or None: no telemetry)")
        self.config = MqttConfig(host=host, port=port, protocol=protocol, allow_insecure=True,
                                 keepalive_s=keepalive_s, reconnect_min_s=reconnect_min_s,
                                 reconnect_max_s=reconnect_max_s)
        self.site = site
        self.telemetry_interval_s = telemetry_interval_s or None
        self._changed = asyncio.Event()  # set on every recorded change; waiters re-check
        self.devices = tuple(
            SimulatedDevice(self.config, DeviceTopics(site, f"dev-{i:04d}"), self._changed.set)
            for i in range(1, n + 1))
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Fleet:
        if self._group is not None:
            raise RuntimeError("this fleet is already running")
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        for device in self.devices:
            self._tasks.append(group.create_task(device.link.run(), name=f"{device.name}-link"))
            if self.telemetry_interval_s is not None:
                self._tasks.append(group.create_task(
                    device.publish_telemetry(self.telemetry_interval_s),
                    name=f"{device.name}-telemetry"))
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        group, self._group = self._group, None
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if group is not None:
            await group.__aexit__(et, e, tb)

    @property
    def failures_to_cap(self) -> int:
        """Failed attempts in a row after which a link's retry window is ``reconnect_max_s``
        (the link's window doubles from ``reconnect_min_s`` at each failure)."""
        failures, window = 1, self.config.reconnect_min_s
        while window < self.config.reconnect_max_s:
            failures, window = failures + 1, window * 2
        return failures

    def connected(self) -> int:
        """How many devices are connected right now (none once the fleet has stopped)."""
        if self._group is None:
            return 0
        return sum(d.is_up for d in self.devices)

    def reconnect_times(self, since: float) -> list[float]:
        """Every connection made at or after ``since`` (monotonic), all devices, in order."""
        return sorted(t for d in self.devices for t in d.connects if t >= since)

    def telemetry_sent(self) -> int:
        return sum(d.telemetry_sent for d in self.devices)

    def storm_report(self, back_at: float, *, window_s: float = 1.0) -> StormReport:
        """Analyse each device's first connection at or after ``back_at``, the monotonic
        instant the broker was started again (take it before starting it: nothing can
        connect earlier, and the broker's own start-up then counts in the delays)."""
        firsts = (d.first_connect_since(back_at) for d in self.devices)
        return analyse_storm([t - back_at for t in firsts if t is not None], len(self.devices),
                             window_s=window_s)

    async def wait_connected(self, timeout_s: float) -> None:
        """Return once every device is connected; raise ``TimeoutError`` saying how many."""
        await self.wait_for(
            lambda: self.connected() == len(self.devices), timeout_s,
            progress=lambda: f"{self.connected()} of {len(self.devices)} devices connected")

    async def wait_reconnected(self, since: float, timeout_s: float) -> None:
        """Return once every device has connected at or after ``since`` (monotonic)."""
        def back() -> int:
            return sum(d.first_connect_since(since) is not None for d in self.devices)

        await self.wait_for(
            lambda: back() == len(self.devices), timeout_s,
            progress=lambda: f"{back()} of {len(self.devices)} devices reconnected")

    async def wait_backed_off(self, since: float, timeout_s: float) -> None:
        """Return once every device has failed :attr:`failures_to_cap` attempts since
        ``since``: each then retries at a uniformly random instant of the capped window."""
        need = self.failures_to_cap

        def capped() -> int:
            return sum(sum(t >= since for t in d.failures) >= need for d in self.devices)

        await self.wait_for(
            lambda: capped() == len(self.devices), timeout_s,
            progress=lambda: f"{capped()} of {len(self.devices)} devices backed off to the "
                             f"cap ({need} failed attempts)")

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float, *,
                       progress: Callable[[], str] | None = None) -> None:
        """Return once ``condition()`` holds, checked after every recorded change (a state
        of a link, a telemetry publish); raise ``TimeoutError`` after ``timeout_s``, with
        ``progress()`` as its message."""
        try:
            async with asyncio.timeout(timeout_s):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            said = progress() if progress is not None else "condition not met"
            raise TimeoutError(f"{said} after {timeout_s:g} s") from None

async def restart_broker(fleet: Fleet, broker: MosquittoBroker, *,
                         timeout_s: float = 120.0) -> float:
    """Restart ``broker`` under a connected ``fleet``; return the monotonic instant it was
    started again, for :meth:`Fleet.storm_report`.

    The broker is stopped and kept down until every device's retry window has reached
    the cap (a long outage: the steady state of backoff), then started on the same port;
    returns once every device has reconnected. Raises ``TimeoutError`` if either phase
    takes longer than ``timeout_s``.
    """
    down_at = time.monotonic()
    await asyncio.to_thread(broker.stop)
    await fleet.wait_backed_off(down_at, timeout_s)
    back_at = time.monotonic()
    await asyncio.to_thread(broker.start)
    await fleet.wait_reconnected(back_at, timeout_s)
    return back_at
