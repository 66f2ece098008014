"""The configuration items the platform may change with a signed ``set_config`` command.

Only policy knobs are remote: the access settings, the clock leeway, and per compartment
its pulse length, skill badges and group. Identity, keys, pins, storage and the broker
stay in the file on the device. Changes are validated as a whole configuration (the same
rules and messages as the file), persisted in ``remote-config.json`` beside the outbox,
and applied again over the file at every start. See docs/configuration.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.atomic import write_atomically
from edge.config import SiteConfig

log = logging.getLogger(__name__)

ACCESS_ITEMS = ("max_failures", "failure_window_s", "lockout_s", "max_badge_lifetime_s",
                "timezone", "audit_interval_s")
COMPARTMENT_ITEMS = ("pulse_ms", "skills", "group")
REMOTE_ITEMS = (*(f"access.{k}" for k in ACCESS_ITEMS), "trust.leeway_s",
                *(f"compartments.<id>.{k}" for k in COMPARTMENT_ITEMS))


class RemoteConfigError(ValueError):
    """An item that may not be changed remotely, or a value the configuration refuses."""


def apply_items(config: SiteConfig, items: Mapping[str, Any]) -> SiteConfig:
    """``config`` with ``items`` (``{"access.lockout_s": 60, ...}``) applied and validated."""
    raw = config.model_dump(mode="python")
    for name, value in items.items():
        _set(raw, name, value)
    try:
        return SiteConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RemoteConfigError(f"{where}: {first['msg']}") from exc


def _set(raw: dict[str, Any], name: str, value: Any) -> None:
    parts = name.split(".")
    if len(parts) == 2 and parts[0] == "access" and parts[1] in ACCESS_ITEMS:
        raw["access"][parts[1]] = value
    elif parts == ["trust", "leeway_s"]:
        raw["trust"]["leeway_s"] = value
    elif len(parts) == 3 and parts[0] == "compartments" and parts[2] in COMPARTMENT_ITEMS:
        for compartment in raw["compartments"]:
            if compartment["id"] == parts[1]:
                compartment[parts[2]] = value
                return
        raise RemoteConfigError(f"{name}: no compartment {parts[1]!r}")
    else:
        raise RemoteConfigError(
            f"{name}: not a remote item (allowed: {', '.join(REMOTE_ITEMS)})")


class RemoteConfigStore:
    """The items set remotely so far, persisted in ``path`` (JSON, fsynced)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[str, Any] = {}
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self.items = loaded
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.error("remote configuration %s unreadable (%s): ignoring it", path, exc)

    def apply_to(self, config: SiteConfig) -> SiteConfig:
        """``config`` with every stored item that still applies (others are logged)."""
        for name, value in list(self.items.items()):
            try:
                config = apply_items(config, {name: value})
            except RemoteConfigError as exc:
                log.error("remote configuration item no longer applies, dropped: %s", exc)
                del self.items[name]
        return config

    def save(self, items: Mapping[str, Any]) -> None:
        """Add ``items`` and persist them all; on OSError nothing changes."""
        merged = {**self.items, **items}
        write_atomically(self.path, json.dumps(merged, separators=(",", ":"), sort_keys=True))
        self.items = merged
