"""A signed, versioned document held on the device: verified, persisted, never rolled back.

Denylists and trust bundles share this life: a new document is accepted only if it
verifies and its version is higher than the one held; the same version again (a retained
message redelivered) is a no-op; an older one is refused (a rollback attempt). The raw
signed token is kept on disk (written atomically, fsynced) and verified again at start,
so an edited file is refused rather than believed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Generic, TypeVar

from edge.atomic import write_atomically
from provisioning.errors import TokenRejected

log = logging.getLogger(__name__)
T = TypeVar("T")


class Update(StrEnum):
    """What became of a document received."""

    APPLIED = "applied"
    SAME = "same"  # this version is already held: nothing to do
    ROLLBACK = "rollback"  # older than the one held: refused
    INVALID = "invalid"  # did not verify: refused


@dataclass(frozen=True)
class UpdateResult:
    outcome: Update
    version: int
    detail: str = ""


class SignedStore(Generic[T]):
    """The current document of one kind, persisted in ``path``.

    ``verify`` turns a token into the document or raises :class:`TokenRejected`;
    ``version_of`` reads its version.
    """

    def __init__(self, path: Path, what: str, verify: Callable[[str], T],
                 version_of: Callable[[T], int]) -> None:
        self.path = path
        self._what = what
        self._verify = verify
        self._version_of = version_of
        self.current: T | None = None
        self._load()

    @property
    def version(self) -> int:
        """The version held; 0 when none is."""
        return self._version_of(self.current) if self.current is not None else 0

    def _load(self) -> None:
        try:
            token = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read the %s %s: %s", self._what, self.path, exc)
            return
        try:
            self.current = self._verify(token)
        except TokenRejected as exc:  # tampered, or from a key no longer trusted
            log.error("stored %s %s refused (%s); keeping none until a new one",
                      self._what, self.path, exc)

    def update(self, token: str) -> UpdateResult:
        """Verify and, if newer, apply and persist ``token``."""
        try:
            candidate = self._verify(token)
        except TokenRejected as exc:
            return UpdateResult(Update.INVALID, self.version, str(exc))
        version = self._version_of(candidate)
        if version == self.version:
            return UpdateResult(Update.SAME, self.version)
        if version < self.version:
            return UpdateResult(Update.ROLLBACK, self.version,
                                f"version {version} is older than {self.version}")
        write_atomically(self.path, token + "\n", encoding="ascii")
        self.current = candidate
        return UpdateResult(Update.APPLIED, version)
