"""The provisioning service's record of enrolled devices: a JSON file, rewritten atomically.

``{"devices": {"<id>": {"site", "signing_key", "serial", "serials", "enrolled_at"}}}``,
plus ``"retired_at"`` once a device is retired. ``serial`` is the latest certificate's,
``serials`` every one ever issued to the device (hex), so retiring it revokes them all.
Public information only (the platform pins each device's Ed25519 ``signing_key`` from it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from provisioning.errors import KeyFileError, ProvisioningError


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

    def retired(self, device_id: str) -> bool:
        entry = self.devices().get(device_id)
        return isinstance(entry, dict) and "retired_at" in entry

    def serials(self, device_id: str) -> tuple[int, ...]:
        """Every certificate serial issued to ``device_id``."""
        entry = self.devices().get(device_id)
        if not isinstance(entry, dict):
            return ()
        listed = entry.get("serials") or [entry.get("serial")]
        return tuple(int(str(value), 16) for value in listed if value)

    def record(self, device_id: str, *, site: str, signing_key: str, serial: int) -> None:
        devices = self.devices()
        earlier = [f"{value:x}" for value in self.serials(device_id)]
        devices[device_id] = {"site": site, "signing_key": signing_key,
                              "serial": f"{serial:x}", "serials": [*earlier, f"{serial:x}"],
                              "enrolled_at": int(time.time())}
        self._write(devices)

    def retire(self, device_id: str) -> tuple[int, ...]:
        """Mark ``device_id`` retired (never enrolled again); return its serials to revoke."""
        devices = self.devices()
        entry = devices.get(device_id)
        if not isinstance(entry, dict):
            raise ProvisioningError(f"{device_id!r} is not in {self.path}")
        entry.setdefault("retired_at", int(time.time()))
        self._write(devices)
        return self.serials(device_id)

    def _write(self, devices: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump({"devices": devices}, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
