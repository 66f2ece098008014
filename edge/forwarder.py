"""The forwarder: drains the outbox to the broker with a window of messages in flight.

Highest class first (audit, alarm, state, telemetry), each class in ``seq`` order, up to
:data:`BATCH_EVENTS` events or :data:`BATCH_BYTES` bytes per MQTT message, at most
:data:`WINDOW` messages awaiting PUBACK. An event is deleted only after its message's
PUBACK. When the connection drops, everything not acknowledged stays in the outbox and the
next connection starts again from the oldest: at-least-once, and in order per class, since
MQTT keeps one connection's QoS 1 publishes in order.
"""

from __future__ import annotations

import asyncio
import json
import logging

from edge.link import LinkDown, MqttLink, PublishRejected
from edge.outbox import EventClass, Outbox, StoredEvent
from edge.topics import DeviceTopics

log = logging.getLogger(__name__)

BATCH_EVENTS = 100
BATCH_BYTES = 64 * 1024
WINDOW = 8
REJECTED_RETRY_S = 5.0


class Forwarder:
    """Moves events from the outbox to ``…/events`` (and telemetry to ``…/telemetry``)."""

    def __init__(self, outbox: Outbox, link: MqttLink, topics: DeviceTopics) -> None:
        self._outbox = outbox
        self._link = link
        self._topics = topics
        self.published = 0  # events acknowledged by the broker since start
        self.messages = 0

    async def run(self) -> None:
        """Forward forever; cancel to stop (unacknowledged events stay queued)."""
        while True:
            await self._link.wait_up()
            try:
                await self._drain_connection()
            except LinkDown as exc:
                log.info("forwarding paused: %s", exc)
            except PublishRejected as exc:
                # Kept, never dropped; retried slowly so a refusing broker is not hammered.
                log.error("broker refused a batch: %s", exc)
                await asyncio.sleep(REJECTED_RETRY_S)

    async def _drain_connection(self) -> None:
        """Send batches on the current connection until it fails."""
        cursors = dict.fromkeys(EventClass, 0)  # last seq sent per class, this connection
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                if len(in_flight) >= WINDOW:
                    await self._settle(in_flight, asyncio.FIRST_COMPLETED)
                    continue
                batch = await self._next_batch(cursors)
                if batch is None:
                    await self._wait_for_work(in_flight, max(cursors.values()))
                    continue
                cursors[batch[0].event_class] = batch[-1].seq
                in_flight.add(asyncio.create_task(self._send(batch), name="forward-batch"))
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _next_batch(self, cursors: dict[EventClass, int]) -> list[StoredEvent] | None:
        for cls in EventClass:
            if self._outbox.class_depth(cls) == 0:
                continue
            batch = await self._outbox.peek(cls, after_seq=cursors[cls], limit=BATCH_EVENTS,
                                            max_bytes=BATCH_BYTES)
            if batch:
                return batch
        return None

    async def _wait_for_work(self, in_flight: set[asyncio.Task[None]], seen: int) -> None:
        """Wait for a new event, or for a batch in flight to finish (or fail)."""
        newer = asyncio.create_task(self._outbox.wait_committed_after(seen))
        try:
            await self._settle({*in_flight, newer}, asyncio.FIRST_COMPLETED, in_flight)
        finally:
            newer.cancel()
            # gather, not suppress(CancelledError): a cancellation of this task that
            # arrives meanwhile must not be swallowed with the child's
            await asyncio.gather(newer, return_exceptions=True)

    @staticmethod
    async def _settle(tasks: set[asyncio.Task[None]], when: str,
                      in_flight: set[asyncio.Task[None]] | None = None) -> None:
        done, _ = await asyncio.wait(tasks, return_when=when)
        pool = tasks if in_flight is None else in_flight
        for task in done:
            if task in pool:
                pool.discard(task)
                task.result()  # re-raise LinkDown / PublishRejected

    async def _send(self, batch: list[StoredEvent]) -> None:
        cls = batch[0].event_class
        payload = (f'{{"device":{json.dumps(self._topics.device)},"events":['
                   + ",".join(e.wire_json() for e in batch) + "]}").encode()
        topic = self._topics.telemetry if cls is EventClass.TELEMETRY else self._topics.events
        await self._link.publish(topic, payload, qos=1,
                                 expiry_s=self._link.telemetry_expiry_s
                                 if cls is EventClass.TELEMETRY else None)
        await self._outbox.ack(batch)
        self.published += len(batch)
        self.messages += 1
