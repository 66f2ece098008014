"""MQTT topic names (docs/mqtt-api.md): ``curbside/v1/{site}/{device}/...``."""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "curbside/v1"


@dataclass(frozen=True)
class DeviceTopics:
    """The topics of one device."""

    site: str
    device: str

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.site}/{self.device}"

    @property
    def status(self) -> str:
        """Retained birth/LWT: ``{"online": true|false, ...}``."""
        return f"{self.base}/status"

    @property
    def events(self) -> str:
        """Batches of events: ``{"device", "events": [{seq, ts, type, ...}]}``."""
        return f"{self.base}/events"
