"""The site's denylist on the device: verified, versioned, persisted, never rolled back.

A :class:`~edge.signed_store.SignedStore` of :class:`~provisioning.denylist.Denylist`,
verified with the issuer keys trusted at the time it arrives. The key that verified it is
kept beside it (``denylist.jws.signer``), so a list signed by a key since rotated out by a
trust bundle is still honoured after a restart: revocations fail closed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from edge.atomic import write_atomically
from edge.signed_store import SignedStore, Update, UpdateResult
from provisioning.badges import Badge
from provisioning.denylist import Denylist, DenylistVerifier
from provisioning.errors import TokenFault, TokenRejected
from provisioning.keys import public_key_b64, public_key_from_b64
from provisioning.tokens import KeyRing, TrustedKey, unverified_kid

__all__ = ["DenylistStore", "Update", "UpdateResult"]

log = logging.getLogger(__name__)

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
        self._signer_path = path.with_name(path.name + ".signer")
        self._signer: tuple[str, str] | None = None
        self._store: SignedStore[Denylist] = SignedStore(
            path, "denylist", self._verify, lambda d: d.version, fallback=self._verify_stored)
        self.path = path
        self._indexed: Denylist | None = None
        self._by: _Index = ({}, {})

    def _verify(self, token: str) -> Denylist:
        keys = self._keys() if callable(self._keys) else self._keys
        denylist = DenylistVerifier(keys, site=self._site).verify(token)
        kid = unverified_kid(token)
        key = keys[kid]
        public = key.key if isinstance(key, TrustedKey) else key
        self._signer = (kid, public_key_b64(public))
        return denylist

    def _verify_stored(self, token: str) -> Denylist:
        """The stored list against the key that verified it when it arrived."""
        try:
            signer = json.loads(self._signer_path.read_text(encoding="utf-8"))
            ring = {str(signer["kid"]): public_key_from_b64(str(signer["key"]))}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenRejected(TokenFault.UNKNOWN_KEY, f"no usable {self._signer_path}: {exc}"
                                ) from exc
        return DenylistVerifier(ring, site=self._site).verify(token)

    @property
    def version(self) -> int:
        return self._store.version

    @property
    def problem(self) -> str | None:
        """Why the stored denylist could not be used at start, if it could not."""
        return self._store.problem

    def update(self, token: str) -> UpdateResult:
        """Verify and, if newer, apply and persist ``token`` (and the key that signed it,
        so that the list is still honoured after that key is rotated out)."""
        result = self._store.update(token)
        if result.outcome is Update.APPLIED and self._signer is not None:
            kid, key = self._signer
            try:
                write_atomically(self._signer_path, json.dumps({"kid": kid, "key": key}))
            except OSError as exc:
                log.error("cannot save %s: %s", self._signer_path, exc)
        return result

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
