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

_Index = tuple[dict[str, int], dict[str, list[tuple[int | None, int]]]]


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
        self._indexed: Denylist | None = None
        self._by: _Index = ({}, {})

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
        """True if a current (not lapsed) entry revokes ``badge``. Constant time: the
        entries are indexed by badge id and member when a list is installed."""
        index = self._index()
        if index is None:
            return False
        by_id, by_member = index
        until = by_id.get(badge.badge_id)
        if until is not None and until > now:
            return True
        return any(until > now and (before is None or badge.issued_at < before)
                   for before, until in by_member.get(badge.member, ()))

    def _index(self) -> _Index | None:
        denylist = self._store.current
        if denylist is None:
            return None
        if self._indexed is not denylist:
            by_id: dict[str, int] = {}
            by_member: dict[str, list[tuple[int | None, int]]] = {}
            for entry in denylist.entries:
                if entry.jti is not None:
                    by_id[entry.jti] = max(entry.until, by_id.get(entry.jti, entry.until))
                elif entry.sub is not None:
                    by_member.setdefault(entry.sub, []).append((entry.before, entry.until))
            self._indexed, self._by = denylist, (by_id, by_member)
        return self._by
