"""The provisioning service's record of enrolled devices: a JSON file, rewritten atomically.

``{"devices": {"<id>": {"site", "signing_key", "serial", "enrolled_at"}}}``. Public
information only (the platform pins each device's Ed25519 ``signing_key`` from it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from provisioning.errors import KeyFileError


class DeviceRegistry:
    """Read on every use, so an operator's edit (removing a device) takes effect at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def devices(self) -> dict[str, dict[str, Any]]:
        """Every enrolled device by id; empty if the file does not exist yet."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"{self.path}: not a device registry: {exc}") from exc
        devices = data.get("devices") if isinstance(data, dict) else None
        if not isinstance(devices, dict):
            raise KeyFileError(f"{self.path}: no 'devices' object")
        return devices

    def signing_key(self, device_id: str) -> str | None:
        entry = self.devices().get(device_id)
        return str(entry["signing_key"]) if isinstance(entry, dict) else None

    def record(self, device_id: str, *, site: str, signing_key: str, serial: int) -> None:
        devices = self.devices()
        devices[device_id] = {"site": site, "signing_key": signing_key,
                              "serial": f"{serial:x}", "enrolled_at": int(time.time())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump({"devices": devices}, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
