"""An issuer's key directory: what the co-op keeps to sign badges.

``DIR/issuer.key`` holds the Ed25519 private key (PEM, 0600); ``DIR/issuer.json`` holds
the public half, the ``kid`` and the issuer name, safe to publish.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioning.errors import KeyFileError
from provisioning.keys import (
    generate_signing_key,
    public_key_b64,
    read_private_key,
    thumbprint_kid,
    write_private_key,
)

KEY_FILE = "issuer.key"
INFO_FILE = "issuer.json"


@dataclass(frozen=True)
class Issuer:
    """An issuer with its signing key loaded."""

    name: str
    kid: str
    key: Ed25519PrivateKey

    @property
    def public_key(self) -> str:
        """The public key as base64url, as written in a site's ``[[trust.issuers]]``."""
        return public_key_b64(self.key.public_key())


def init_issuer(directory: Path, *, name: str, kid: str | None = None) -> Issuer:
    """Create ``directory`` (0700) with a new issuer key; refuse to replace an existing one."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = generate_signing_key()
    issuer = Issuer(name=name, kid=kid or thumbprint_kid(key.public_key()), key=key)
    write_private_key(directory / KEY_FILE, key)
    info = {"issuer": name, "kid": issuer.kid, "public_key": issuer.public_key}
    (directory / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return issuer


def load_issuer(directory: Path) -> Issuer:
    """Load an issuer directory made by :func:`init_issuer`."""
    info_path = directory / INFO_FILE
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        name, kid = str(info["issuer"]), str(info["kid"])
    except OSError as exc:
        raise KeyFileError(f"{info_path}: cannot read: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{info_path}: not an issuer description: {exc}") from exc
    return Issuer(name=name, kid=kid, key=read_private_key(directory / KEY_FILE))
