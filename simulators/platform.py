"""A stand-in for the co-op's central platform: records what a site publishes.

It subscribes to ``curbside/v1/{site}/#`` with its own paho client, deduplicates events by
(device, seq) as the real platform must, and lets async code wait for a condition::

    async with PlatformRecorder("127.0.0.1", port, site="elm-street") as platform:
        await platform.wait_for(lambda p: len(p.events) >= 3, timeout_s=5)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

_ids = itertools.count(1)


@dataclass
class PlatformRecorder:
    """Everything a site published, as seen by an independent subscriber."""

    host: str
    port: int
    site: str
    events: list[dict[str, Any]] = field(default_factory=list)  # unique, in arrival order
    duplicates: int = 0
    duplicate_keys: list[tuple[str, int]] = field(default_factory=list)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> last status
    malformed: int = 0
    subscriptions: int = 0  # SUBACKs received: one per (re)connection
    states: list[dict[str, Any]] = field(default_factory=list)  # every state snapshot seen

    def __post_init__(self) -> None:
        self._seen: set[tuple[str, int]] = set()
        self._changed = asyncio.Event()  # set on every message; waiters re-check
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribed: asyncio.Future[None] | None = None
        # A persistent session: messages published while this subscriber is away (a
        # broker restart) are queued by the broker and delivered when it is back.
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"platform-recorder-{next(_ids)}-{id(self):x}",
            clean_session=False,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    async def __aenter__(self) -> PlatformRecorder:
        self._loop = asyncio.get_running_loop()
        self._subscribed = self._loop.create_future()
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        await asyncio.wait_for(self._subscribed, 10)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, self._client.loop_stop)

    # paho's network thread --------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        client.subscribe(f"curbside/v1/{self.site}/#", qos=1)

    def _on_subscribe(self, client: mqtt.Client, u: Any, mid: int, codes: Any, p: Any) -> None:
        if self._loop is not None and self._subscribed is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_resolve, self._subscribed)
                self._loop.call_soon_threadsafe(self._count_subscription)

    def _count_subscription(self) -> None:
        self.subscriptions += 1
        self._changed.set()

    def _on_message(self, client: mqtt.Client, u: Any, message: mqtt.MQTTMessage) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._ingest, message.topic, message.payload)

    # the event loop ---------------------------------------------------------------------
    def _ingest(self, topic: str, payload: bytes | bytearray) -> None:
        parts = topic.split("/")
        try:
            body = json.loads(payload)
        except ValueError:
            self.malformed += 1
            return
        if len(parts) == 5 and parts[4] == "status":
            self.status[parts[3]] = body
        elif len(parts) == 5 and parts[4] == "state":
            self.states.append(body)
        elif len(parts) == 5 and parts[4] in ("events", "telemetry"):
            for event in body.get("events", []):
                key = (str(body.get("device")), int(event["seq"]))
                if key in self._seen:
                    self.duplicates += 1
                    self.duplicate_keys.append(key)
                    continue
                self._seen.add(key)
                self.events.append({"device": key[0], **event})
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[PlatformRecorder], bool], timeout_s: float = 10.0
    ) -> None:
        """Return once ``predicate(self)`` holds; raise TimeoutError after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    def in_order_per_class(self) -> bool:
        """True if, for each device and class, events arrived in increasing seq order."""
        last: dict[tuple[str, str], int] = {}
        for e in self.events:
            key = (str(e["device"]), str(e.get("class")))
            if int(e["seq"]) <= last.get(key, 0):
                return False
            last[key] = int(e["seq"])
        return True

    async def expect_every_seq(self, high: int, timeout_s: float = 30.0) -> None:
        """Wait until seqs 1..``high`` have all arrived; fail naming the missing ranges."""
        try:
            await self.wait_for(lambda p: len(p.events) >= high, timeout_s)
        except TimeoutError:
            got = {int(e["seq"]) for e in self.events}
            ranges: list[tuple[int, int]] = []
            for seq in sorted(set(range(1, high + 1)) - got):
                if ranges and ranges[-1][1] == seq - 1:
                    ranges[-1] = (ranges[-1][0], seq)
                else:
                    ranges.append((seq, seq))
            raise AssertionError(f"of seq 1..{high}, these never arrived: {ranges}") from None

    def of_device(self, device: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["device"] == device]

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
