"""Signed trust bundles: which issuer and command keys a site trusts, and until when.

A trust bundle is a compact JWS with ``typ: curbside-trust+jwt``, signed by a *root*
key that each device pins in its configuration, for one site (``aud``), with a monotonic
version (``ver``). It lists the badge issuer keys (``isk``) and the platform command keys
(``cmk``), each with an optional validity window (``nbf``/``exp``, Unix seconds), which is
how keys rotate: the new key is added with a start time, the old one given an end; and
optionally the CA certificates the device trusts for its broker (``cas``, PEM), which is
how the broker's CA rotates (the new CA listed beside the old until every certificate is
reissued). A
device installs a bundle only if it verifies and is newer than the one it holds. See
docs/badges.md.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, field_validator

from provisioning.keys import public_key_from_b64
from provisioning.tokens import KeyRing, TokenVerifier, TrustedKey, sign_token, typed_claims

TRUST_TYP = "curbside-trust+jwt"
MAX_KEYS = 64
MAX_CAS = 4


class KeyGrant(BaseModel):
    """One trusted public key (base64url, 32 bytes) and its validity window."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kid: str = Field(min_length=1, max_length=64)
    key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")
    nbf: int | None = Field(default=None, strict=True)
    exp: int | None = Field(default=None, strict=True)

    @field_validator("key")
    @classmethod
    def _a_public_key(cls, value: str) -> str:
        public_key_from_b64(value)  # canonical base64url of 32 bytes, or ValueError
        return value

    def trusted(self) -> TrustedKey:
        return TrustedKey(public_key_from_b64(self.key), self.nbf, self.exp)


def _unique(keys: tuple[KeyGrant, ...]) -> tuple[KeyGrant, ...]:
    kids = [k.kid for k in keys]
    if len(set(kids)) != len(kids):
        raise ValueError("each kid may appear once")
    return keys


class TrustBundle(BaseModel):
    """The verified claims of a trust bundle."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")
    issuer: str = Field(alias="iss")
    site: str = Field(alias="aud")
    issued_at: int = Field(alias="iat")
    version: int = Field(alias="ver", ge=1, strict=True)
    issuer_keys: tuple[KeyGrant, ...] = Field(alias="isk", min_length=1, max_length=MAX_KEYS)
    command_keys: tuple[KeyGrant, ...] = Field(alias="cmk", default=(), max_length=MAX_KEYS)

    broker_cas: tuple[str, ...] = Field(alias="cas", default=(), max_length=MAX_CAS)

    _unique_issuers = field_validator("issuer_keys")(_unique)
    _unique_commands = field_validator("command_keys")(_unique)

    @field_validator("broker_cas")
    @classmethod
    def _ca_certificates(cls, pems: tuple[str, ...]) -> tuple[str, ...]:
        for index, pem in enumerate(pems):
            try:
                cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
                constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
            except (ValueError, UnicodeEncodeError, x509.ExtensionNotFound) as exc:
                raise ValueError(f"cas[{index}]: not a PEM CA certificate: {exc}") from exc
            if not constraints.value.ca:
                raise ValueError(f"cas[{index}]: {cert.subject.rfc4514_string()} is not a CA")
        return pems

    def issuer_ring(self) -> dict[str, TrustedKey]:
        return {k.kid: k.trusted() for k in self.issuer_keys}

    def command_ring(self) -> dict[str, TrustedKey]:
        return {k.kid: k.trusted() for k in self.command_keys}


def issue_trust_bundle(
    root: Ed25519PrivateKey, *, kid: str, issuer: str, site: str, version: int, now: int,
    issuer_keys: Sequence[Mapping[str, object]], command_keys: Sequence[Mapping[str, object]] = (),
    broker_cas: Sequence[str] = (),
) -> str:
    """Sign a trust bundle with the root key (platform side). Keys are
    ``{"kid", "key", "nbf"?, "exp"?}``, ``broker_cas`` PEM CA certificates; a bundle a
    device would refuse is refused here."""
    claims: dict[str, object] = {
        "iss": issuer, "aud": site, "iat": now, "jti": secrets.token_urlsafe(6),
        "ver": version, "isk": [dict(k) for k in issuer_keys],
        "cmk": [dict(k) for k in command_keys]}
    if broker_cas:
        claims["cas"] = [pem.strip() + "\n" for pem in broker_cas]
    typed_claims(TrustBundle, claims, error=ValueError)
    return sign_token(claims, root, kid=kid, typ=TRUST_TYP)


class TrustBundleVerifier:
    """Verifies trust bundles for one site against the pinned root keys."""

    def __init__(self, root_keys: KeyRing, *, site: str) -> None:
        self._tokens = TokenVerifier(root_keys, typ=TRUST_TYP, audience=site,
                                     required=("iss", "aud", "iat", "jti", "ver"),
                                     max_chars=64 * 1024)

    def verify(self, token: str) -> TrustBundle:
        """Signature, typ and site; the version, not the clock, orders bundles."""
        return typed_claims(TrustBundle, self._tokens.verify(token, now=None))
