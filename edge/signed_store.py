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
from provisioning.errors import TokenFault, TokenRejected

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
    ``version_of`` reads its version. ``fallback``, if given, verifies the stored token
    at start when ``verify`` no longer can because its key is no longer trusted (a
    denylist signed by a key since rotated out is still honoured: fail closed).

    The highest version ever accepted is also kept in ``<path>.version``: if the stored
    token is lost or refused, older versions are still refused (the same version is
    accepted again, which restores it from the retained message).
    """

    def __init__(self, path: Path, what: str, verify: Callable[[str], T],
                 version_of: Callable[[T], int],
                 fallback: Callable[[str], T] | None = None) -> None:
        self.path = path
        self._version_path = path.with_name(path.name + ".version")
        self._what = what
        self._verify = verify
        self._version_of = version_of
        self.current: T | None = None
        self.problem: str | None = None  # why the stored document could not be used
        self._load(fallback)
        self._floor = max(self.version, self._read_floor())

    @property
    def version(self) -> int:
        """The version held; 0 when none is."""
        return self._version_of(self.current) if self.current is not None else 0

    def _read_floor(self) -> int:
        try:
            return int(self._version_path.read_text(encoding="ascii").strip())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.error("cannot read %s: %s", self._version_path, exc)
            return 0

    def _load(self, fallback: Callable[[str], T] | None) -> None:
        try:
            token = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            self.problem = f"cannot read {self.path}: {exc}"
            log.error("%s", self.problem)
            return
        try:
            self.current = self._verify(token)
            return
        except TokenRejected as exc:
            refused = exc
        if fallback is not None and refused.fault in (TokenFault.UNKNOWN_KEY,
                                                      TokenFault.KEY_NOT_VALID):
            try:
                self.current = fallback(token)
                log.warning("stored %s signed by a key no longer trusted (%s): still honoured "
                            "until a newer one arrives", self._what, refused)
                return
            except TokenRejected as exc:
                refused = exc
        self.problem = f"stored {self._what} {self.path} refused ({refused})"
        log.error("%s; keeping none until a new one", self.problem)

    def update(self, token: str) -> UpdateResult:
        """Verify and, if newer, apply and persist ``token``. A disk that refuses the
        write does not refuse the document: it applies in memory (``detail`` says so)."""
        try:
            candidate = self._verify(token)
        except TokenRejected as exc:
            return UpdateResult(Update.INVALID, self.version, str(exc))
        version = self._version_of(candidate)
        if version == self.version and self.current is not None:
            return UpdateResult(Update.SAME, self.version)
        if version < self._floor:
            return UpdateResult(Update.ROLLBACK, self.version,
                                f"version {version} is older than {self._floor}")
        self.current = candidate
        self._floor = version
        self.problem = None
        try:
            write_atomically(self._version_path, f"{version}\n", encoding="ascii")
            write_atomically(self.path, token + "\n", encoding="ascii")
        except OSError as exc:
            log.error("%s version %d applied but not saved: %s", self._what, version, exc)
            return UpdateResult(Update.APPLIED, version, f"held in memory only: {exc}")
        return UpdateResult(Update.APPLIED, version)
