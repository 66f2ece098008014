"""Member badges: a typed, signed statement of what a member may open.

A badge is a compact JWS (see :mod:`provisioning.tokens`) with header
``typ: curbside-badge+jwt``. Its claims (``docs/badges.md``) are the standard ``iss``,
``sub`` (member), ``aud`` (site), ``iat``, ``nbf`` (omitted when equal to ``iat``),
``exp`` and ``jti``, plus what it grants: compartments (``cpt``) and groups (``grp``),
the member's skill badges with their levels (``skl``, ``{"battery-handling": 2}``),
optional weekly time windows (``win``), an optional use limit (``use``, 1 = single use),
maintainer permissions (``prm``: ``service``, ``audit``, ``calibrate:<sensor>``), and
``utt`` when the badge may be honoured while the device's clock is untrusted. Short
claim names keep a typical badge under 400 bytes: a QR code or an NTAG215 tag.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from provisioning.tokens import KeyRing, TokenVerifier, sign_token, typed_claims
from provisioning.windows import WeeklyWindow

BADGE_TYP = "curbside-badge+jwt"
MAX_LIFETIME_S = 31 * 24 * 3600  # badges are short-lived: a month at most
MAX_SKILL_LEVEL = 9
MAX_USES = 1000
SERVICE = "service"  # open any compartment, for maintenance
AUDIT = "audit"  # run audit mode: every door opened in turn
CALIBRATE = "calibrate"  # calibrate:<sensor id> or calibrate:*
_PERMISSION = re.compile(r"^(service|audit|calibrate:(\*|[A-Za-z0-9][A-Za-z0-9_-]{0,31}))$")

Skills = Mapping[str, int] | Iterable[str]


def _window(value: Any) -> Any:
    return WeeklyWindow.parse(value) if isinstance(value, str) else value


def _permission(value: Any) -> Any:
    if isinstance(value, str) and not _PERMISSION.match(value):
        raise ValueError("expected service, audit or calibrate:<sensor>|*")
    return value


Window = Annotated[WeeklyWindow, BeforeValidator(_window)]
Permission = Annotated[str, BeforeValidator(_permission)]
SkillName = Annotated[str, Field(min_length=1, max_length=32)]


class Badge(BaseModel):
    """The verified claims of a badge, named for the domain."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore",
                              arbitrary_types_allowed=True)

    issuer: str = Field(alias="iss", min_length=1, max_length=64)
    member: str = Field(alias="sub", min_length=1, max_length=64)
    site: str = Field(alias="aud", min_length=1, max_length=64)
    issued_at: int = Field(alias="iat")
    not_before: int = Field(alias="nbf")
    expires_at: int = Field(alias="exp")
    badge_id: str = Field(alias="jti", min_length=1, max_length=64)
    compartments: tuple[str, ...] = Field(alias="cpt", default=(), max_length=64)
    groups: tuple[str, ...] = Field(alias="grp", default=(), max_length=64)
    skills: dict[SkillName, Annotated[int, Field(ge=1, le=MAX_SKILL_LEVEL, strict=True)]] = Field(
        alias="skl", default_factory=dict, max_length=64)
    windows: tuple[Window, ...] = Field(alias="win", default=(), max_length=16)
    use_limit: int | None = Field(alias="use", default=None, ge=1, le=MAX_USES, strict=True)
    permissions: tuple[Permission, ...] = Field(alias="prm", default=(), max_length=16)
    allows_untrusted_time: bool = Field(alias="utt", default=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _nbf_defaults_to_iat(cls, data: Any) -> Any:
        if isinstance(data, dict) and "nbf" not in data and "iat" in data:
            return {**data, "nbf": data["iat"]}
        return data

    @property
    def lifetime_s(self) -> int:
        """How long the badge lives: from ``iat`` (or ``nbf`` if earlier) to ``exp``. A
        badge issued now for next month lives more than a month, and the cap counts that:
        a denylist entry kept for the longest lifetime then outlasts every badge it names."""
        return self.expires_at - min(self.issued_at, self.not_before)

    def skill_level(self, skill: str) -> int:
        """The member's level in ``skill``; 0 if the badge does not name it."""
        return self.skills.get(skill, 0)

    def may(self, permission: str) -> bool:
        """True if the badge carries a maintainer ``permission`` (``service``, ``audit``)."""
        return permission in self.permissions

    def may_calibrate(self, sensor: str) -> bool:
        """True if the badge allows calibrating ``sensor``."""
        return f"{CALIBRATE}:{sensor}" in self.permissions or f"{CALIBRATE}:*" in self.permissions


def skill_levels(skills: Skills) -> dict[str, int]:
    """``{"name": level}`` from a mapping, or level 1 for each name of a plain list."""
    if isinstance(skills, Mapping):
        return {str(k): int(v) for k, v in skills.items()}
    out: dict[str, int] = {}
    for item in skills:
        name, _, level = item.partition(":")
        out[name] = int(level) if level else 1
    return out


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
    skills: Skills = (),
    windows: Iterable[str] = (),
    use_limit: int | None = None,
    permissions: Iterable[str] = (),
    not_before: int | None = None,
    badge_id: str | None = None,
    allows_untrusted_time: bool = False,
) -> str:
    """Sign a badge valid from ``not_before`` (default ``now``) for ``lifetime_s`` seconds.

    ``skills`` is ``{"name": level}`` or names (level 1; ``"name:2"`` gives level 2).
    Claims a device would refuse are refused here, with the claim named.
    """
    start = now if not_before is None else not_before
    if lifetime_s <= 0 or start + lifetime_s - min(now, start) > MAX_LIFETIME_S:
        raise ValueError(f"a badge lives at most {MAX_LIFETIME_S}s from issue to expiry "
                         f"(lifetime_s {lifetime_s}, starting {start - now}s after issue)")
    claims: dict[str, object] = {
        "iss": issuer, "sub": member, "aud": site, "iat": now,
        "exp": start + lifetime_s,
        "jti": badge_id or secrets.token_urlsafe(6),  # 48 random bits per issuer
    }
    # Optional claims are left out when empty: every byte counts on a tag.
    optional: dict[str, object] = {
        "nbf": start if start != now else None,
        "cpt": list(compartments), "grp": list(groups), "skl": skill_levels(skills),
        "win": list(windows), "use": use_limit, "prm": list(permissions),
        "utt": True if allows_untrusted_time else None,
    }
    claims.update({k: v for k, v in optional.items() if v not in (None, [], {})})
    typed_claims(Badge, claims, error=ValueError)  # refuse to sign what a device refuses
    return sign_token(claims, key, kid=kid, typ=BADGE_TYP)


class BadgeVerifier:
    """Verifies badges for one site against the trusted issuer keys (``kid`` -> key)."""

    def __init__(self, issuer_keys: KeyRing, *, site: str, leeway_s: float = 60.0) -> None:
        self._tokens = TokenVerifier(issuer_keys, typ=BADGE_TYP, audience=site, leeway_s=leeway_s)

    def verify(self, token: str, *, now: float) -> Badge:
        """Return the badge; raise :class:`TokenRejected` if anything about it is wrong."""
        claims = self._tokens.verify(token, now=now)
        return typed_claims(Badge, claims)
