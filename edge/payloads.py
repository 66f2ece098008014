"""The MQTT payloads as pydantic models: the single source of docs/asyncapi.json.

These models describe what the agent publishes and accepts; the AsyncAPI document is
generated from them (``python -m edge.asyncapi``) and the tests validate payloads
captured from a real broker against the generated schemas, so the two cannot drift.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

Hex64 = Field(pattern=r"^[0-9a-f]{64}$")


class Status(BaseModel):
    """``…/status`` (retained): the birth message, the LWT and the goodbye."""

    model_config = ConfigDict(extra="forbid")
    online: bool
    boot_id: str = Field(description="changes at every start of the agent")
    version: str | None = Field(default=None, description="present in the birth message")


class WireEvent(BaseModel):
    """One event. Type-specific fields follow the four common ones (docs/mqtt-api.md)."""

    model_config = ConfigDict(extra="allow")
    seq: int = Field(ge=1, description="device-monotonic; deduplicate by (device, seq)")
    ts: float = Field(description="Unix seconds, millisecond precision, agent clock")
    tq: Literal["synchronised", "floor", "untrusted"] = Field(
        description="time quality of ts (docs/architecture.md, trusted time)")
    type: str = Field(pattern=r"^[a-z_]+(\.[a-z_]+)+$", examples=["access.granted"])
    class_: Literal["audit", "alarm", "state", "telemetry"] = Field(alias="class")
    prev: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$",
        description="audit events: hex SHA-256 chain link to the previous audit event")


class EventBatch(BaseModel):
    """``…/events`` and ``…/telemetry``: events of one class, oldest first."""

    model_config = ConfigDict(extra="forbid")
    device: str
    events: list[WireEvent] = Field(min_length=1, max_length=100)


class OutboxState(BaseModel):
    """The outbox as the device sees it: what waits, its size, what was dropped."""

    model_config = ConfigDict(extra="forbid")
    depth: int = Field(ge=0)
    by_class: dict[str, int]
    bytes_by_class: dict[str, int]
    wal_bytes: int = Field(ge=0)
    oldest_age_s: float | None = Field(description="age of the oldest waiting event")
    dropped: dict[str, int] = Field(description="events evicted by the budget since start")
    held_in_memory: int = Field(ge=0, description="events not yet written: storage failed")
    fault: str | None = Field(description="the storage error while writes fail")


class AgentCounters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scans: int = Field(ge=0)
    unlocks: int = Field(ge=0)
    garbage_lines: int = Field(ge=0)


class StateSnapshot(BaseModel):
    """``…/state`` (retained): the device now; republished on every connection."""

    model_config = ConfigDict(extra="forbid")
    device: str
    site: str
    boot_id: str
    version: str
    ts: float
    tq: Literal["synchronised", "floor", "untrusted"]
    doors: dict[str, Literal["open", "closed"]]
    compartments: dict[str, Literal[
        "locked", "unlocking", "unlocked", "open", "ajar", "held_open", "relocking", "forced",
        "unlock_failed", "fault"]] = Field(description="each compartment's state machine")
    hardware_link: bool = Field(description="false while the locker hardware is unreachable")
    sensors: dict[str, dict[str, object]] = Field(
        description="per sensor: kind, latest calibrated values, samples, problems, "
                    "calibration coefficients")
    batteries: dict[str, dict[str, object]] = Field(
        description="per battery: present, ready, problems, latest reading, charging")
    device_key: dict[str, str] = Field(
        description="the device's record-signing key: kid and public_key (base64url)")
    outbox: OutboxState
    denylist_version: int = Field(ge=0, description="0: no denylist received yet")
    trust_version: int = Field(
        ge=0, description="installed trust bundle; 0: the configuration's keys")
    remote_config: dict[str, object] = Field(
        description="items set by signed set_config commands, applied over the file")
    stats: AgentCounters


class SignedDocument(RootModel[str]):
    """A compact JWS (docs/badges.md): ASCII ``header.payload.signature``, retained."""

    root: str = Field(pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
                      max_length=2 * 1024 * 1024)


class CommandRequest(BaseModel):
    """``…/cmd``: a request; MQTT 5 clients set a response topic and correlation data."""

    model_config = ConfigDict(extra="forbid")
    command: str = Field(examples=["ping"])
    id: str = Field(min_length=1, max_length=64, description="a repeated id is not re-run")
    args: dict[str, object] = Field(default_factory=dict)


class CommandReply(BaseModel):
    """The reply, on the response topic (MQTT 5) or ``…/cmd/result`` (3.1.1)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    command: str
    ok: bool
    result: dict[str, object] | None = None
    error: str | None = None
