"""The forwarder: drains the outbox to the broker, oldest first, deleting only after PUBACK.

One batch (at most :data:`BATCH_EVENTS` events) is in flight at a time, so events reach
the broker in ``seq`` order. If the link drops before the PUBACK, the batch stays in the
outbox and is sent again after reconnecting: at-least-once, the platform deduplicates by
(device, seq).
"""

from __future__ import annotations

import asyncio
import json
import logging

from edge.link import LinkDown, MqttLink, PublishRejected
from edge.outbox import Outbox
from edge.topics import DeviceTopics

log = logging.getLogger(__name__)

BATCH_EVENTS = 50
REJECTED_RETRY_S = 5.0


class Forwarder:
    """Moves events from the outbox to ``…/events``."""

    def __init__(self, outbox: Outbox, link: MqttLink, topics: DeviceTopics) -> None:
        self._outbox = outbox
        self._link = link
        self._topics = topics
        self.published = 0  # events acknowledged by the broker since start

    async def run(self) -> None:
        """Forward forever; cancel to stop (an unacknowledged batch stays queued)."""
        while True:
            await self._outbox.wait_nonempty()
            await self._link.wait_up()
            batch = await self._outbox.peek(BATCH_EVENTS)
            if not batch:
                continue
            payload = json.dumps(
                {"device": self._topics.device, "events": [e.to_wire() for e in batch]},
                separators=(",", ":"),
            ).encode()
            try:
                await self._link.publish(self._topics.events, payload, qos=1)
            except LinkDown as exc:
                log.info("batch of %d kept for later: %s", len(batch), exc)
                continue
            except PublishRejected as exc:
                # Kept, never dropped; retried slowly so a refusing broker is not hammered.
                log.error("broker refused a batch of %d: %s", len(batch), exc)
                await asyncio.sleep(REJECTED_RETRY_S)
                continue
            await self._outbox.delete(e.seq for e in batch)
            self.published += len(batch)
