"""The site's denylist on the device: verified, versioned, persisted, never rolled back.

A :class:`~edge.signed_store.SignedStore` of :class:`~provisioning.denylist.Denylist`,
verified with the issuer keys trusted at the time it arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge.signed_store import SignedStore, Update, UpdateResult
from provisioning.badges import Badge
from provisioning.denylist import Denylist, DenylistVerifier
from provisioning.tokens import KeyRing

__all__ = ["DenylistStore", "Update", "UpdateResult"]


class DenylistStore:
    """The current denylist, persisted in ``path``.

    ``issuer_keys`` is a key ring or a callable returning the current one (the trust
    store's, which a trust bundle can change).
    """

    def __init__(self, path: Path, issuer_keys: KeyRing | Callable[[], KeyRing], *,
                 site: str) -> None:
        self._keys = issuer_keys
        self._site = site
        self._store: SignedStore[Denylist] = SignedStore(
            path, "denylist", self._verify, lambda d: d.version)
        self.path = path

    def _verify(self, token: str) -> Denylist:
        keys = self._keys() if callable(self._keys) else self._keys
        return DenylistVerifier(keys, site=self._site).verify(token)

    @property
    def version(self) -> int:
        return self._store.version

    def update(self, token: str) -> UpdateResult:
        """Verify and, if newer, apply and persist ``token``."""
        return self._store.update(token)

    def revokes(self, badge: Badge, *, now: float) -> bool:
        """True if a current entry revokes ``badge``."""
        denylist = self._store.current
        if denylist is None:
            return False
        return any(e.revokes(badge_id=badge.badge_id, member=badge.member,
                             issued_at=badge.issued_at)
                   for e in denylist.current(now))
