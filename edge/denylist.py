"""The site's denylist on the device: verified, versioned, persisted, never rolled back.

Storage and policy layer. A new list is accepted only if it verifies (issuer key, typ,
site) and its version is higher than the one held; the same version again (a retained
message redelivered) is a no-op, an older one is refused (a rollback attempt). The raw
signed token is kept on disk and verified again at start, so an edited file is refused.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from provisioning.badges import Badge
from provisioning.denylist import Denylist, DenylistVerifier
from provisioning.errors import TokenRejected

log = logging.getLogger(__name__)


class Update(StrEnum):
    """What became of a denylist received."""

    APPLIED = "applied"
    SAME = "same"  # this version is already held: nothing to do
    ROLLBACK = "rollback"  # older than the one held: refused
    INVALID = "invalid"  # did not verify: refused


@dataclass(frozen=True)
class UpdateResult:
    outcome: Update
    version: int
    detail: str = ""


class DenylistStore:
    """The current denylist, persisted in ``path``."""

    def __init__(self, path: Path, verifier: DenylistVerifier) -> None:
        self.path = path
        self._verifier = verifier
        self._list: Denylist | None = None
        self._load()

    @property
    def version(self) -> int:
        return self._list.version if self._list is not None else 0

    def _load(self) -> None:
        try:
            token = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot read the denylist %s: %s", self.path, exc)
            return
        try:
            self._list = self._verifier.verify(token)
        except TokenRejected as exc:  # tampered or from a key no longer trusted
            log.error("stored denylist %s refused (%s); keeping none until a new one",
                      self.path, exc)

    def update(self, token: str) -> UpdateResult:
        """Verify and, if newer, apply and persist ``token``."""
        try:
            candidate = self._verifier.verify(token)
        except TokenRejected as exc:
            return UpdateResult(Update.INVALID, self.version, str(exc))
        if candidate.version == self.version:
            return UpdateResult(Update.SAME, self.version)
        if candidate.version < self.version:
            return UpdateResult(Update.ROLLBACK, self.version,
                                f"version {candidate.version} is older than {self.version}")
        self._persist(token)
        self._list = candidate
        return UpdateResult(Update.APPLIED, candidate.version)

    def _persist(self, token: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def revokes(self, badge: Badge, *, now: float) -> bool:
        """True if a current entry revokes ``badge``."""
        if self._list is None:
            return False
        return any(e.revokes(badge_id=badge.badge_id, member=badge.member,
                             issued_at=badge.issued_at)
                   for e in self._list.current(now))
