"""Typed compact JWS tokens signed with Ed25519 (RFC 7515, RFC 8037).

Every token that crosses a trust boundary has its own ``typ`` header, is signed with
EdDSA only, and names its signing key by ``kid``. Verification is pinned: the algorithm
is fixed, keys are key objects looked up by ``kid`` (never bytes chosen by the token),
and time checks use the caller's clock so the agent can apply its own time policy.

Raises :class:`~provisioning.errors.TokenRejected` with a :class:`TokenFault` for every
failure; nothing else escapes :meth:`TokenVerifier.verify`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ValidationError

from provisioning.errors import TokenFault, TokenRejected
from provisioning.keys import b64url_decode

M = TypeVar("M", bound=BaseModel)
ALGORITHM = "EdDSA"
MAX_TOKEN_CHARS = 2048  # far above any real badge (< 400); bounds the work a forged one causes


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A trusted public key and the Unix-time window in which it may be used (rotation).

    ``None`` ends are open. A token is refused (``key_not_valid``) when verified outside
    the window, or when its ``iat`` says it was signed outside it.
    """

    key: Ed25519PublicKey
    not_before: int | None = None
    not_after: int | None = None

    def valid_at(self, ts: float, leeway_s: float = 0.0) -> bool:
        return ((self.not_before is None or ts >= self.not_before - leeway_s)
                and (self.not_after is None or ts <= self.not_after + leeway_s))


KeyRing = Mapping[str, Ed25519PublicKey | TrustedKey]


def typed_claims(model: type[M], claims: Mapping[str, Any],
                 error: type[Exception] | None = None) -> M:
    """Verified claims as ``model``; a claim of the wrong type or size is ``bad_claims``
    (or ``error``, for the signing side, which should refuse what a device refuses)."""
    try:
        return model.model_validate(claims)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if error is not None:
            raise error(f"claim {where}: {first['msg']}") from exc
        raise TokenRejected(TokenFault.BAD_CLAIMS, f"{where}: {first['msg']}") from exc


def sign_token(claims: Mapping[str, Any], key: Ed25519PrivateKey, *, kid: str, typ: str) -> str:
    """Sign ``claims`` as a compact JWS with header ``{alg: EdDSA, kid, typ}``."""
    return jwt.encode(dict(claims), key, algorithm=ALGORITHM, headers={"kid": kid, "typ": typ})


class TokenVerifier:
    """Verifies compact JWS tokens of one ``typ`` against pinned Ed25519 keys.

    ``keys`` maps ``kid`` to a public key or a :class:`TrustedKey` with a validity
    window; ``audience`` is the required ``aud``;
    ``required`` lists claims that must be present; ``leeway_s`` is the clock tolerance
    applied to ``nbf`` (``iat`` when ``nbf`` is absent) and ``exp``.
    """

    def __init__(
        self,
        keys: KeyRing,
        *,
        typ: str,
        audience: str,
        required: tuple[str, ...] = ("iss", "sub", "aud", "iat", "exp", "jti"),
        leeway_s: float = 60.0,
        max_chars: int = MAX_TOKEN_CHARS,
    ) -> None:
        self._keys = {kid: k if isinstance(k, TrustedKey) else TrustedKey(k)
                      for kid, k in keys.items()}
        self._typ = typ
        self._audience = audience
        self._required = list(required)
        self._leeway_s = leeway_s
        self._max_chars = max_chars

    def verify(self, token: str, *, now: float | None) -> dict[str, Any]:
        """Return the verified claims of ``token`` at Unix time ``now``.

        ``now=None`` skips the time checks: for statements that are not time-limited
        credentials (a denylist must hold even when the device's clock is wrong).
        """
        header = self._check_shape_and_header(token)
        kid = header["kid"]
        trusted = self._keys.get(kid)
        if trusted is None:
            raise TokenRejected(TokenFault.UNKNOWN_KEY, f"no trusted key with kid {kid!r}")
        claims = self._check_signature(token, trusted.key)
        _check_time_types(claims)
        self._check_key_window(trusted, claims, now)
        if now is not None:
            self._check_times(claims, now)
        return claims

    def _check_key_window(self, trusted: TrustedKey, claims: Mapping[str, Any],
                          now: float | None) -> None:
        if now is not None and not trusted.valid_at(now, self._leeway_s):
            raise TokenRejected(TokenFault.KEY_NOT_VALID, "the signing key is not valid now")
        issued = claims.get("iat")
        if issued is not None and not trusted.valid_at(issued, self._leeway_s):
            raise TokenRejected(TokenFault.KEY_NOT_VALID,
                                "signed outside the signing key's validity window")

    def _check_shape_and_header(self, token: str) -> dict[str, Any]:
        if len(token) > self._max_chars:
            raise TokenRejected(TokenFault.MALFORMED, f"token longer than {self._max_chars}")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRejected(TokenFault.MALFORMED, "a compact JWS has three parts")
        try:
            raw_parts = [b64url_decode(p) for p in parts]
            header = json.loads(raw_parts[0].decode("utf-8"))  # RFC 7515: UTF-8 only
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise TokenRejected(TokenFault.MALFORMED, str(exc)) from exc
        if not isinstance(header, dict):
            raise TokenRejected(TokenFault.MALFORMED, "header is not a JSON object")
        if header.get("alg") != ALGORITHM:
            raise TokenRejected(TokenFault.BAD_ALGORITHM, f"alg {header.get('alg')!r}")
        if header.get("typ") != self._typ:
            raise TokenRejected(TokenFault.WRONG_TYPE, f"typ {header.get('typ')!r}")
        if not isinstance(header.get("kid"), str):
            raise TokenRejected(TokenFault.MALFORMED, "header has no string kid")
        if "crit" in header:
            raise TokenRejected(TokenFault.MALFORMED, "no critical header extensions are known")
        return header

    def _check_signature(self, token: str, key: Ed25519PublicKey) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                options={
                    "require": self._required,
                    "verify_exp": False,  # time is checked below against the caller's clock
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise TokenRejected(TokenFault.BAD_SIGNATURE, "signature does not verify") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected(TokenFault.WRONG_AUDIENCE, str(exc)) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(TokenFault.MISSING_CLAIM, str(exc)) from exc
        except jwt.InvalidAlgorithmError as exc:
            raise TokenRejected(TokenFault.BAD_ALGORITHM, str(exc)) from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected(TokenFault.MALFORMED, str(exc)) from exc
        return claims

    def _check_times(self, claims: Mapping[str, Any], now: float) -> None:
        for name in ("iat", "nbf"):  # neither issued nor valid in the future
            start = claims.get(name)
            if start is not None and start > now + self._leeway_s:
                raise TokenRejected(TokenFault.NOT_YET_VALID, f"{name} is {start}")
        if "exp" in claims and claims["exp"] <= now - self._leeway_s:
            raise TokenRejected(TokenFault.EXPIRED, f"expired at {claims['exp']}")


def _check_time_types(claims: Mapping[str, Any]) -> None:
    """``iat``, ``nbf`` and ``exp`` are integers whenever present, clock or no clock."""
    for name in ("iat", "nbf", "exp"):
        value = claims.get(name)
        if name in claims and (not isinstance(value, int) or isinstance(value, bool)):
            raise TokenRejected(TokenFault.BAD_CLAIMS, f"{name} is not an integer")


def unverified_kid(token: str) -> str:
    """The ``kid`` of a token's header, unverified: only for a token already verified."""
    header = json.loads(b64url_decode(token.split(".", maxsplit=1)[0]).decode("utf-8"))
    return str(header["kid"])
