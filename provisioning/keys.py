"""Ed25519 signing keys: generation, key ids, and key files written 0600.

Public keys travel as the base64url encoding of their 32 raw bytes (the JWK ``x``
member), which fits on one line of a TOML file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from provisioning.errors import KeyFileError

KID_LENGTH = 11  # characters of the base64url RFC 7638 thumbprint kept as a default kid


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515, section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url; raise ValueError unless ``text`` is the canonical encoding.

    Canonical means re-encoding gives the same text, so the unused low bits of the last
    character are zero: two different strings never decode to the same bytes.
    """
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key from the operating system's CSPRNG."""
    return Ed25519PrivateKey.generate()


def public_key_b64(key: Ed25519PublicKey) -> str:
    """The 32 raw public key bytes, base64url-encoded."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64url_encode(raw)


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """Parse :func:`public_key_b64` output; raise ValueError for anything else."""
    raw = b64url_decode(text)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def thumbprint_kid(key: Ed25519PublicKey) -> str:
    """A short key id: the RFC 7638 JWK thumbprint, base64url, first 11 characters (66 bits)."""
    jwk = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": public_key_b64(key)},
        separators=(",", ":"),
        sort_keys=True,
    )
    return b64url_encode(hashlib.sha256(jwk.encode("ascii")).digest())[:KID_LENGTH]


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, created 0600; refuse to overwrite."""
    write_secret_pem(path, key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))


def write_secret_pem(path: Path, pem: bytes) -> None:
    """Create ``path`` 0600 from the first instant with ``pem``, fsynced; never replace a
    file that exists (:class:`KeyFileError`): a key is not overwritten by accident."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a PEM Ed25519 private key written by :func:`write_private_key`."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key: {exc.strerror}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
    return key
