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

    @property
    def telemetry(self) -> str:
        """Batches of telemetry events, same shape as ``events``."""
        return f"{self.base}/telemetry"

    @property
    def state(self) -> str:
        """Retained snapshot of the device's current state."""
        return f"{self.base}/state"

    @property
    def denylist(self) -> str:
        """The site's signed denylist (retained, for every device of the site)."""
        return f"{ROOT}/{self.site}/denylist"

    @property
    def trust(self) -> str:
        """The site's signed trust bundle (retained, for every device of the site)."""
        return f"{ROOT}/{self.site}/trust"

    @property
    def cmd(self) -> str:
        """Commands in."""
        return f"{self.base}/cmd"

    @property
    def cmd_result(self) -> str:
        """Command replies for MQTT 3.1.1 clients (MQTT 5 uses the response topic)."""
        return f"{self.base}/cmd/result"
