"""Member badges: a typed, signed statement of what a member may open.

A badge is a compact JWS (see :mod:`provisioning.tokens`) with header
``typ: curbside-badge+jwt``. Its claims (``docs/badges.md``) are the standard ``iss``,
``sub`` (member), ``aud`` (site), ``iat``, ``nbf`` (omitted when equal to ``iat``),
``exp`` and ``jti``, plus the
compartments (``cpt``) and groups (``grp``) granted and the member's skill badges
(``skl``), and ``utt`` when the badge may be honoured while the device's clock is
untrusted (an emergency or maintainer badge). Short claim names keep a typical badge
under 400 bytes, so it fits a QR code or an NTAG215 tag.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, model_validator

from provisioning.tokens import TokenVerifier, sign_token, typed_claims

BADGE_TYP = "curbside-badge+jwt"
MAX_LIFETIME_S = 31 * 24 * 3600  # badges are short-lived: a month at most

_Name = Field(min_length=1, max_length=64)


class Badge(BaseModel):
    """The verified claims of a badge, named for the domain."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    issuer: str = Field(alias="iss", min_length=1, max_length=64)
    member: str = Field(alias="sub", min_length=1, max_length=64)
    site: str = Field(alias="aud", min_length=1, max_length=64)
    issued_at: int = Field(alias="iat")
    not_before: int = Field(alias="nbf")
    expires_at: int = Field(alias="exp")
    badge_id: str = Field(alias="jti", min_length=1, max_length=64)
    compartments: tuple[str, ...] = Field(alias="cpt", default=(), max_length=64)
    groups: tuple[str, ...] = Field(alias="grp", default=(), max_length=64)
    skills: tuple[str, ...] = Field(alias="skl", default=(), max_length=64)
    allows_untrusted_time: bool = Field(alias="utt", default=False)

    @model_validator(mode="before")
    @classmethod
    def _nbf_defaults_to_iat(cls, data: Any) -> Any:
        if isinstance(data, dict) and "nbf" not in data and "iat" in data:
            return {**data, "nbf": data["iat"]}
        return data


def issue_badge(
    key: Ed25519PrivateKey,
    *,
    kid: str,
    issuer: str,
    member: str,
    site: str,
    now: int,
    lifetime_s: int,
    compartments: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
    skills: tuple[str, ...] = (),
    not_before: int | None = None,
    badge_id: str | None = None,
    allows_untrusted_time: bool = False,
) -> str:
    """Sign a badge valid from ``not_before`` (default ``now``) for ``lifetime_s`` seconds."""
    if not 0 < lifetime_s <= MAX_LIFETIME_S:
        raise ValueError(f"lifetime_s must be in 1..{MAX_LIFETIME_S}, got {lifetime_s}")
    start = now if not_before is None else not_before
    claims: dict[str, object] = {
        "iss": issuer,
        "sub": member,
        "aud": site,
        "iat": now,

        "exp": start + lifetime_s,
        "jti": badge_id or secrets.token_urlsafe(6),  # 48 random bits per issuer
    }
    if start != now:  # omitted when equal to iat: every byte counts on a tag
        claims["nbf"] = start
    if compartments:
        claims["cpt"] = list(compartments)
    if groups:
        claims["grp"] = list(groups)
    if skills:
        claims["skl"] = list(skills)
    if allows_untrusted_time:
        claims["utt"] = True
    return sign_token(claims, key, kid=kid, typ=BADGE_TYP)


class BadgeVerifier:
    """Verifies badges for one site against the pinned issuer keys (``kid`` -> key)."""

    def __init__(
        self, issuer_keys: Mapping[str, Ed25519PublicKey], *, site: str, leeway_s: float = 60.0
    ) -> None:
        self._tokens = TokenVerifier(issuer_keys, typ=BADGE_TYP, audience=site, leeway_s=leeway_s)

    def verify(self, token: str, *, now: float) -> Badge:
        """Return the badge; raise :class:`TokenRejected` if anything about it is wrong."""
        claims = self._tokens.verify(token, now=now)
        return typed_claims(Badge, claims)
