"""Site configuration: one TOML file, validated into a frozen pydantic model tree.

:func:`load_config` is the only entry point. Relative paths in the file are resolved
against the file's directory. Every failure raises :class:`ConfigError` naming the file,
the key path (``compartments[1].pulse_ms``) and what was expected. See docs/configuration.md.
"""

from __future__ import annotations

import tomllib
import zoneinfo
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge.errors import ConfigError
from provisioning.keys import public_key_from_b64

MAX_PULSE_MS = 3000  # no solenoid is energised longer than this, whatever the file says
MAX_BRIDGE_CHANNEL = 255  # one byte in the bridge protocol
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]
PinName = int | Annotated[str, Field(pattern=r"^(GPIO|BCM|BOARD|J8:)?[0-9]{1,2}$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeviceConfig(_Frozen):
    """Who this agent is: its device id and the site it serves."""

    id: Identifier
    site: Identifier


class TlsConfig(_Frozen):
    """Mutual TLS to the broker: the CA to trust and this device's certificate and key."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttConfig(_Frozen):
    """The link to the central broker. Plaintext needs ``allow_insecure = true``."""

    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    tls: TlsConfig | None = None
    allow_insecure: bool = False
    telemetry_expiry_s: int = Field(default=86400, ge=60)
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _tls_or_explicitly_insecure(self) -> MqttConfig:
        if self.tls is None and not self.allow_insecure:
            raise ValueError(
                "set [mqtt.tls] (ca_file, cert_file, key_file) or allow_insecure = true"
            )
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


class StorageConfig(_Frozen):
    """The outbox database and its size budget in bytes."""

    path: Path
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)


class IssuerKey(_Frozen):
    """A trusted public key, pinned by ``kid``, with an optional validity window.

    ``not_before`` / ``not_after`` are TOML date-times (``2026-12-01T00:00:00Z``): the
    key is used only between them, which is how a key is rotated out.
    """

    kid: str = Field(min_length=1, max_length=64)
    public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$", description="base64url, 32 bytes")
    not_before: datetime | None = None
    not_after: datetime | None = None

    @field_validator("public_key")
    @classmethod
    def _a_public_key(cls, value: str) -> str:
        public_key_from_b64(value)  # canonical base64url of 32 bytes, or ValueError
        return value

    @field_validator("not_before", "not_after")
    @classmethod
    def _with_zone(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-12-01T00:00:00Z")
        return value

    def window(self) -> tuple[int | None, int | None]:
        """The window as Unix seconds (``None``: open)."""
        return (None if self.not_before is None else int(self.not_before.timestamp()),
                None if self.not_after is None else int(self.not_after.timestamp()))


def _unique_kids(keys: tuple[IssuerKey, ...]) -> tuple[IssuerKey, ...]:
    kids = [k.kid for k in keys]
    if len(set(kids)) != len(kids):
        raise ValueError("each kid must appear once")
    return keys


class TrustConfig(_Frozen):
    """The keys this site trusts. An unknown ``kid`` is always a denial.

    ``issuers`` and ``command_keys`` are the keys the device starts with; a signed trust
    bundle under one of the ``root_keys`` replaces both (docs/badges.md).
    """

    issuers: tuple[IssuerKey, ...] = Field(min_length=1)
    command_keys: tuple[IssuerKey, ...] = Field(
        default=(), description="platform keys that may sign commands; none: no signed commands")
    root_keys: tuple[IssuerKey, ...] = Field(
        default=(), description="keys that may sign trust bundles; none: bundles refused")
    leeway_s: int = Field(default=60, ge=0, le=600)

    _unique_issuers = field_validator("issuers")(_unique_kids)
    _unique_commands = field_validator("command_keys")(_unique_kids)
    _unique_roots = field_validator("root_keys")(_unique_kids)


class AccessConfig(_Frozen):
    """Access policy knobs: brute-force defence, badge lifetime cap, local time, audit mode."""

    max_failures: int = Field(default=5, ge=1, le=1000)
    failure_window_s: float = Field(default=60.0, gt=0, le=86400)
    lockout_s: float = Field(default=120.0, ge=0, le=86400)
    max_badge_lifetime_s: int = Field(default=31 * 86400, ge=60, le=31 * 86400)
    timezone: str = Field(default="UTC", description="IANA zone for badge time windows")
    audit_interval_s: float = Field(default=2.0, ge=0.5, le=60)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name like Europe/Paris)"
                             ) from exc
        return value

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


class ReaderConfig(_Frozen):
    """The badge reader's serial port, by pyserial URL (a device path, ``socket://``...)."""

    url: str = Field(min_length=1)
    baudrate: int = Field(default=9600, gt=0)


class CompartmentConfig(_Frozen):
    """One locker compartment: its lock, its inputs, its timers and its access policy.

    With the ``bridge`` backend the pins are the microcontroller's output and input
    numbers (0-based integers).
    """

    id: Identifier
    solenoid_pin: PinName
    door_pin: PinName
    feedback_pin: PinName | None = Field(
        default=None, description="lock feedback switch: closed (low) when locked")
    item_pin: PinName | None = Field(
        default=None, description="item presence switch: closed (low) when the item is in")
    lock: Literal["strike", "maglock"] = Field(
        default="strike", description="strike: fail-secure, energise to unlock; "
                                      "maglock: fail-safe, energised to hold")
    pulse_ms: int = Field(default=500, ge=50, le=MAX_PULSE_MS)
    relock_s: float = Field(default=10.0, ge=1, le=600)
    ajar_s: float = Field(default=30.0, ge=1, le=3600)
    held_open_s: float = Field(default=120.0, ge=1, le=86400)
    relock_check_s: float = Field(
        default=2.0, gt=0, le=60,
        description="with lock feedback: closed but not locked by then is a fault")
    debounce_ms: int = Field(default=50, ge=0, le=1000)
    duty_budget_s: float = Field(default=15.0, gt=0, le=3600,
                                 description="coil on-time allowed per duty_window_s")
    duty_window_s: float = Field(default=60.0, gt=0, le=3600)
    skills: dict[Identifier, Annotated[int, Field(ge=1, le=9)]] = Field(
        default_factory=dict, description="skill badge -> minimum level")
    group: Identifier | None = None

    @field_validator("skills", mode="before")
    @classmethod
    def _names_mean_level_one(cls, value: Any) -> Any:
        """``skills = ["battery-handling"]`` is ``{battery-handling = 1}``."""
        if isinstance(value, list | tuple):
            return {name: 1 for name in value}
        return value

    @model_validator(mode="after")
    def _timers_in_order(self) -> CompartmentConfig:
        if self.ajar_s > self.held_open_s:
            raise ValueError("ajar_s must not exceed held_open_s (ajar warns, held open alarms)")
        if self.duty_budget_s < self.pulse_ms / 1000:
            raise ValueError("duty_budget_s must allow at least one pulse")
        return self

    def inputs(self) -> dict[str, PinName]:
        """The compartment's inputs by role: door, and feedback and item if wired."""
        found = {"door": self.door_pin, "feedback": self.feedback_pin, "item": self.item_pin}
        return {name: pin for name, pin in found.items() if pin is not None}


class SensorConfig(_Frozen):
    """A curb sensor on a serial port (docs/sensors.md)."""

    id: Identifier
    kind: Literal["pms5003", "sds011"]
    url: str = Field(min_length=1, description="pyserial URL of its serial port")
    interval_s: float = Field(default=60.0, ge=1, le=3600, description="one sample every")
    warmup_s: float = Field(default=30.0, ge=0, le=300,
                            description="fan on this long before a sample (duty cycling)")
    duty_cycle: bool = Field(default=True, description="sleep between samples")
    aggregate_s: int = Field(default=60, ge=1, le=3600,
                             description="telemetry: one aggregate per this many seconds")
    read_timeout_s: float = Field(default=3.0, gt=0, le=60)
    stale_after_s: float | None = Field(default=None, gt=0,
                                        description="default: three intervals")
    stuck_after: int = Field(default=10, ge=2, le=10_000)
    max_ugm3: float = Field(default=1000.0, gt=0, description="plausible range top")
    max_error_rate: float = Field(default=0.2, gt=0, le=1)

    @model_validator(mode="after")
    def _warmup_fits(self) -> SensorConfig:
        if self.duty_cycle and self.warmup_s >= self.interval_s:
            raise ValueError("warmup_s must be shorter than interval_s when duty cycling")
        return self


class BatteryConfig(_Frozen):
    """A battery bank's monitor (BMS or shunt) and the bay it gates (docs/batteries.md)."""

    id: Identifier
    kind: Literal["jbd", "vedirect"]
    url: str = Field(min_length=1)
    compartment: Identifier | None = Field(
        default=None, description="the battery bay: opens for a loan only if ready")
    interval_s: float = Field(default=10.0, ge=0.2, le=3600)
    absent_after_s: float = Field(default=30.0, gt=0, description="silent this long: gone")
    min_soc_pct: float = Field(default=80.0, ge=0, le=100)
    min_temp_c: float = Field(default=0.0, ge=-40, le=80)
    max_temp_c: float = Field(default=45.0, ge=-40, le=80)
    charger_pin: PinName | None = Field(default=None, description="GPIO relay: on = charge")
    charge_max_temp_c: float = Field(default=45.0, ge=0, le=80)
    charge_resume_temp_c: float = Field(default=40.0, ge=-40, le=80)

    @model_validator(mode="after")
    def _limits_in_order(self) -> BatteryConfig:
        if self.min_temp_c >= self.max_temp_c:
            raise ValueError("min_temp_c must be below max_temp_c")
        if self.charge_resume_temp_c >= self.charge_max_temp_c:
            raise ValueError("charge_resume_temp_c must be below charge_max_temp_c")
        return self


class GpioHardware(_Frozen):
    """Real GPIO through gpiozero with a named pin factory (``lgpio`` on a Pi)."""

    backend: Literal["gpio"]
    pin_factory: Literal["lgpio", "rpigpio", "pigpio", "native"] = "lgpio"


class MockHardware(_Frozen):
    """gpiozero's MockFactory: simulated pins, for the simulators and tests."""

    backend: Literal["mock"]


class BridgeHardware(_Frozen):
    """A microcontroller on a serial line drives the locks (docs/firmware-bridge.md)."""

    backend: Literal["bridge"]
    url: str = Field(min_length=1, description="pyserial URL: /dev/ttyACM0, a pty...")
    baudrate: int = Field(default=115200, gt=0)
    heartbeat_s: float = Field(default=0.5, gt=0, le=10)
    link_timeout_s: float = Field(default=2.0, gt=0, le=60,
                                  description="silence after which the link is down")

    @model_validator(mode="after")
    def _timeout_after_heartbeats(self) -> BridgeHardware:
        if self.link_timeout_s < 2 * self.heartbeat_s:
            raise ValueError("link_timeout_s must be at least two heartbeats")
        return self


Hardware = Annotated[GpioHardware | MockHardware | BridgeHardware,
                     Field(discriminator="backend")]


class SiteConfig(_Frozen):
    """The whole agent configuration."""

    device: DeviceConfig
    mqtt: MqttConfig
    storage: StorageConfig
    trust: TrustConfig
    reader: ReaderConfig
    access: AccessConfig = AccessConfig()
    hardware: Hardware
    compartments: tuple[CompartmentConfig, ...] = Field(min_length=1)
    sensors: tuple[SensorConfig, ...] = ()
    batteries: tuple[BatteryConfig, ...] = ()

    @model_validator(mode="after")
    def _distinct_compartments_and_pins(self) -> SiteConfig:
        ids = [c.id for c in self.compartments]
        if len(set(ids)) != len(ids):
            raise ValueError("compartment ids must be unique")
        devices = [s.id for s in self.sensors] + [b.id for b in self.batteries]
        if len(set(devices)) != len(devices):
            raise ValueError("sensor and battery ids must be unique")
        for battery in self.batteries:
            if battery.compartment is not None and battery.compartment not in ids:
                raise ValueError(f"battery {battery.id}: no compartment {battery.compartment}")
            if battery.charger_pin is not None and isinstance(self.hardware, BridgeHardware):
                raise ValueError(f"battery {battery.id}: charger_pin needs GPIO hardware")
        outputs = [str(c.solenoid_pin) for c in self.compartments] + [
            str(b.charger_pin) for b in self.batteries if b.charger_pin is not None]
        inputs = [str(p) for c in self.compartments for p in c.inputs().values()]
        if isinstance(self.hardware, BridgeHardware):  # outputs and inputs are numbered apart
            if not all(isinstance(p, int) for c in self.compartments
                       for p in (c.solenoid_pin, *c.inputs().values())):
                raise ValueError("with the bridge backend, pins are the microcontroller's "
                                 "output and input numbers (integers)")
            if len(set(outputs)) != len(outputs) or len(set(inputs)) != len(inputs):
                raise ValueError("each bridge output and input may be used once")
            if not all(0 <= int(p) <= MAX_BRIDGE_CHANNEL for p in (*outputs, *inputs)):
                raise ValueError(f"bridge output and input numbers are 0..{MAX_BRIDGE_CHANNEL}")
        elif len(set(outputs + inputs)) != len(outputs + inputs):
            raise ValueError("each pin may be used by one compartment input or output only")
        return self


def load_config(path: Path) -> SiteConfig:
    """Read and validate ``path``; raise :class:`ConfigError` with file and key on failure."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        config = SiteConfig.model_validate(_resolve_paths(raw, path.parent))
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc)) from exc
    return config


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the file's relative paths relative to its own directory."""
    def fix(section: Any, keys: tuple[str, ...]) -> None:
        if isinstance(section, dict):
            for key in keys:
                value = section.get(key)
                if isinstance(value, str) and value and not Path(value).is_absolute():
                    section[key] = str(base / value)

    fix(raw.get("storage"), ("path",))
    mqtt = raw.get("mqtt")
    if isinstance(mqtt, dict):
        fix(mqtt.get("tls"), ("ca_file", "cert_file", "key_file"))
    return raw


def _describe(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration ({exc.error_count()} problem(s))"]
    for error in exc.errors():
        where = _key_path(error["loc"])
        got = error.get("input")
        shown = "" if isinstance(got, dict) or error["type"] == "missing" else f", got {got!r}"
        lines.append(f"  {where}: {_expected(error)}{shown}")
    return "\n".join(lines)


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("gpio", "mock", "bridge") and out == "hardware":
            continue  # pydantic's discriminator tag is not a key of the file
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _expected(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see docs/configuration.md)"
    msg: str = error["msg"]
    return "expected " + msg[0].lower() + msg[1:] if not msg.startswith("Value error") else msg[13:]
