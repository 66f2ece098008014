"""Signed platform commands: short-lived, addressed to one device, used once.

A command is a compact JWS with ``typ: curbside-command+jwt`` signed by a platform
command key, ``aud`` the device id, ``iat``/``exp`` at most :data:`MAX_LIFETIME_S` apart,
a ``jti`` nonce (the device keeps every jti it has accepted until it expires), the
command ``cmd`` and its ``args``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field

from provisioning.errors import TokenFault, TokenRejected
from provisioning.tokens import KeyRing, TokenVerifier, sign_token, typed_claims

COMMAND_TYP = "curbside-command+jwt"
MAX_LIFETIME_S = 300


class Command(BaseModel):
    """The verified claims of a command."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")
    operator: str = Field(alias="iss", min_length=1, max_length=64)
    device: str = Field(alias="aud")
    issued_at: int = Field(alias="iat")
    expires_at: int = Field(alias="exp")
    nonce: str = Field(alias="jti", min_length=8, max_length=64)
    name: str = Field(alias="cmd", min_length=1, max_length=32)
    args: dict[str, Any] = Field(default_factory=dict)


def issue_command(key: Ed25519PrivateKey, *, kid: str, operator: str, device: str, name: str,
                  now: int, args: Mapping[str, Any] | None = None,
                  lifetime_s: int = 60) -> str:
    """Sign a command for one device (platform side)."""
    if not 0 < lifetime_s <= MAX_LIFETIME_S:
        raise ValueError(f"lifetime_s must be in 1..{MAX_LIFETIME_S}")
    claims = {"iss": operator, "aud": device, "iat": now, "exp": now + lifetime_s,
              "jti": secrets.token_urlsafe(12), "cmd": name, "args": dict(args or {})}
    return sign_token(claims, key, kid=kid, typ=COMMAND_TYP)


class CommandVerifier:
    """Verifies commands addressed to ``device`` against the pinned command keys."""

    def __init__(self, keys: KeyRing, *, device: str,
                 leeway_s: float = 30.0) -> None:
        self._tokens = TokenVerifier(keys, typ=COMMAND_TYP, audience=device, leeway_s=leeway_s,
                                     required=("iss", "aud", "iat", "exp", "jti", "cmd"))

    def verify(self, token: str, *, now: float | None) -> Command:
        """``now=None`` skips the time checks (only for commands that set the time)."""
        claims = self._tokens.verify(token, now=now)
        command = typed_claims(Command, claims)
        if command.expires_at - command.issued_at > MAX_LIFETIME_S:
            raise TokenRejected(TokenFault.BAD_CLAIMS, f"lives longer than {MAX_LIFETIME_S}s")
        return command
