"""Signed denylists: revocations a site must honour even offline.

A denylist is a compact JWS with ``typ: curbside-denylist+jwt`` signed by an issuer key,
for one site (``aud``), with a monotonic version (``ver``). Each entry revokes badges by
id (``jti``), by member (``sub``), or a member's badges issued before a time (``sub`` +
``before``), and lapses at ``until`` (when every badge it revokes has expired anyway), so
the list stays small. See docs/badges.md.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, model_validator

from provisioning.tokens import KeyRing, TokenVerifier, sign_token, typed_claims

DENYLIST_TYP = "curbside-denylist+jwt"
MAX_ENTRIES = 10_000
MAX_DENYLIST_CHARS = 2 * 1024 * 1024


class Revocation(BaseModel):
    """One entry: a badge id, a member, or a member's badges issued before a time."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    jti: str | None = Field(default=None, min_length=1, max_length=64)
    sub: str | None = Field(default=None, min_length=1, max_length=64)
    before: int | None = Field(default=None, strict=True)
    until: int = Field(strict=True, description="the entry lapses at this time (Unix seconds)")

    @model_validator(mode="after")
    def _one_kind(self) -> Revocation:
        if (self.jti is None) == (self.sub is None):
            raise ValueError("an entry names either a jti or a sub")
        if self.before is not None and self.sub is None:
            raise ValueError("before needs a sub")
        return self

    def revokes(self, *, badge_id: str, member: str, issued_at: int) -> bool:
        if self.jti is not None:
            return self.jti == badge_id
        if self.sub != member:
            return False
        return self.before is None or issued_at < self.before


class Denylist(BaseModel):
    """The verified claims of a denylist."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")
    issuer: str = Field(alias="iss")
    site: str = Field(alias="aud")
    issued_at: int = Field(alias="iat")
    version: int = Field(alias="ver", ge=1, strict=True)
    entries: tuple[Revocation, ...] = Field(alias="ent", default=(), max_length=MAX_ENTRIES)

    def current(self, now: float) -> tuple[Revocation, ...]:
        """Entries that have not lapsed."""
        return tuple(e for e in self.entries if e.until > now)


def issue_denylist(key: Ed25519PrivateKey, *, kid: str, issuer: str, site: str, version: int,
                   entries: Sequence[Mapping[str, object]], now: int) -> str:
    """Sign a denylist (platform side)."""
    claims = {"iss": issuer, "aud": site, "iat": now, "jti": secrets.token_urlsafe(6),
              "ver": version, "ent": [dict(e) for e in entries]}
    typed_claims(Denylist, claims, error=ValueError)  # refuse what a device would refuse
    return sign_token(claims, key, kid=kid, typ=DENYLIST_TYP)


class DenylistVerifier:
    """Verifies denylists for one site against the pinned issuer keys."""

    def __init__(self, issuer_keys: KeyRing, *, site: str) -> None:
        self._tokens = TokenVerifier(issuer_keys, typ=DENYLIST_TYP, audience=site,
                                     required=("iss", "aud", "iat", "jti", "ver"),
                                     max_chars=MAX_DENYLIST_CHARS)

    def verify(self, token: str) -> Denylist:
        """Signature, typ and site; no clock involved: a device whose clock was set back
        must not forget revocations, and the version (not the time) orders denylists."""
        claims = self._tokens.verify(token, now=None)
        return typed_claims(Denylist, claims)
