"""Device-signed records checked as the co-op's platform would: pure, no I/O.

Simulator layer, used by :class:`simulators.platform_checks.PlatformLedger`. The
``record`` of a ``sensor.calibrated`` or ``battery.swapped`` event is verified against
the device's key (:class:`provisioning.records.RecordVerifier`) and the event's plain
fields are checked against what the record signs. The key is the one pinned for the
device, or else the one it announces in its retained ``state``; a record that arrives
before any key waits for one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from provisioning.errors import TokenFault, TokenRejected
from provisioning.keys import public_key_b64, public_key_from_b64, thumbprint_kid
from provisioning.records import CalibrationRecord, RecordVerifier, SwapRecord

Event = dict[str, Any]
RECORD_EVENTS = {"sensor.calibrated": "calibration", "battery.swapped": "swap"}
# event field -> record attribute, each of which the event restates unsigned
_CALIBRATION_FIELDS = {"sensor": "sensor", "member": "maintainer", "badge_id": "badge_id",
                       "version": "version", "passed": "passed"}
_SWAP_FIELDS = {"compartment": "bay", "member": "member", "badge_id": "badge_id"}


class RecordFault(StrEnum):
    """Why a record was refused, beyond the token checks (:class:`TokenFault`)."""

    NO_DEVICE_KEY = "no_device_key"  # neither pinned nor announced yet: retried later
    MISSING_RECORD = "missing_record"  # the event carries no record string
    EVENT_MISMATCH = "event_mismatch"  # the event says otherwise than its signed record


@dataclass(frozen=True)
class VerifiedRecord:
    device: str
    seq: int
    event_type: str
    record: CalibrationRecord | SwapRecord
    key_source: Literal["pinned", "announced"]
    token: str


@dataclass(frozen=True)
class RejectedRecord:
    device: str
    seq: int
    event_type: str
    reason: TokenFault | RecordFault
    detail: str
    token: str | None


class RecordChecker:
    """The records of one site's devices, verified or refused.

    ``pinned``: device -> its public key (or the key's base64url form). A pinned device's
    records verify only against that key, whatever it announces (a different
    announcement is noted in ``key_warnings``).
    """

    def __init__(self, site: str, pinned: Mapping[str, Ed25519PublicKey | str] | None,
                 key_warnings: dict[str, str]) -> None:
        self.site = site
        self.key_warnings = key_warnings
        self._pinned = {d: public_key_from_b64(k) if isinstance(k, str) else k
                        for d, k in (pinned or {}).items()}
        self._announced: dict[str, Ed25519PublicKey] = {}
        self._verified: list[VerifiedRecord] = []
        self._rejected: list[RejectedRecord] = []
        self._unkeyed: list[tuple[str, int, Event]] = []

    def learn_key(self, device: str, announced: Any) -> None:
        """A key announced in the device's ``state``: used unless one is pinned."""
        if not isinstance(announced, dict):
            return
        kid, text = announced.get("kid"), announced.get("public_key")
        try:
            key = public_key_from_b64(text) if isinstance(text, str) else None
        except ValueError:
            key = None
        if key is None or thumbprint_kid(key) != kid:
            self.key_warnings[device] = f"announced an unusable key (kid {kid!r})"
            return
        pinned = self._pinned.get(device)
        if pinned is not None:
            if public_key_b64(pinned) != text:
                self.key_warnings[device] = f"announces kid {kid}, not its pinned key " \
                                            f"{thumbprint_kid(pinned)}"
            return
        self._announced[device] = key
        waiting = [w for w in self._unkeyed if w[0] == device]
        self._unkeyed = [w for w in self._unkeyed if w[0] != device]
        for _, seq, event in waiting:
            self.check(device, seq, event)

    def check(self, device: str, seq: int, event: Event) -> None:
        """Verify the record ``event`` carries (a ``sensor.calibrated`` or ``battery.swapped``)."""
        token, event_type = event.get("record"), str(event["type"])

        def reject(reason: TokenFault | RecordFault, detail: str) -> None:
            self._rejected.append(RejectedRecord(device, seq, event_type, reason, detail,
                                                 token if isinstance(token, str) else None))

        if not isinstance(token, str):
            reject(RecordFault.MISSING_RECORD, f"{event_type} without a record")
            return
        pinned = self._pinned.get(device)
        key = pinned or self._announced.get(device)
        if key is None:
            self._unkeyed.append((device, seq, event))
            return
        verifier = RecordVerifier({thumbprint_kid(key): key}, site=self.site, device=device)
        try:
            record: CalibrationRecord | SwapRecord = verifier.verify_calibration(token) \
                if RECORD_EVENTS[event_type] == "calibration" else verifier.verify_swap(token)
        except TokenRejected as exc:
            reject(exc.fault, exc.detail)
            return
        restated = _CALIBRATION_FIELDS if isinstance(record, CalibrationRecord) else _SWAP_FIELDS
        for name, attribute in restated.items():
            if event.get(name) != getattr(record, attribute):
                reject(RecordFault.EVENT_MISMATCH, f"event {name} {event.get(name)!r}, record "
                       f"{getattr(record, attribute)!r}")
                return
        self._verified.append(VerifiedRecord(device, seq, event_type, record,
                                             "pinned" if pinned else "announced", token))

    def verified(self) -> list[VerifiedRecord]:
        """Records that verified against the device's key and agree with their event."""
        return list(self._verified)

    def rejected(self) -> list[RejectedRecord]:
        """Records refused, with the reason; those waiting for a device key are listed as
        ``no_device_key`` until the device's ``state`` announces one."""
        waiting = [RejectedRecord(d, s, str(e["type"]), RecordFault.NO_DEVICE_KEY,
                                  "no pinned or announced key for the device",
                                  e["record"] if isinstance(e.get("record"), str) else None)
                   for d, s, e in self._unkeyed]
        return [*self._rejected, *waiting]
