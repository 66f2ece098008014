"""The device's own Ed25519 signing key: created once, kept 0600, never logged.

Infrastructure layer of the agent. The device signs its outcome records
(:mod:`provisioning.records`) with this key; the platform pins the public key
(:attr:`DeviceKey.public_key_b64`, named by :attr:`DeviceKey.kid`) per device. A key
file that exists but cannot be read is an error, never a reason to make a new key: the
device's identity would change and the platform would refuse everything it signs.
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import ConfigError
from provisioning.errors import KeyFileError
from provisioning.keys import (
    generate_signing_key,
    public_key_b64,
    read_private_key,
    thumbprint_kid,
    write_private_key,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """The device's private ``key``, its ``kid`` (RFC 7638 thumbprint) and public key."""

    key: Ed25519PrivateKey = field(repr=False)
    kid: str
    public_key_b64: str
    path: Path

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()

    @classmethod
    def load_or_create(cls, path: Path) -> DeviceKey:
        """Load the key at ``path``, or create it there (0600, PKCS#8 PEM) if absent.

        Raises :class:`~edge.errors.ConfigError` naming the file if it exists but is
        unreadable or not an Ed25519 private key, or cannot be created.
        """
        if not path.exists() and not path.is_symlink():
            cls._create(path)
        try:
            key = read_private_key(path)
        except KeyFileError as exc:
            raise ConfigError(f"device key {exc}; move it aside only to give this device a "
                              "new identity (its public key must then be registered again)",
                              ) from exc
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("device key %s is readable by others: chmod 600 it", path)
        device_key = cls(key=key, kid=thumbprint_kid(key.public_key()),
                         public_key_b64=public_key_b64(key.public_key()), path=path)
        log.info("device key %s: kid %s", path, device_key.kid)
        return device_key

    @staticmethod
    def _create(path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private_key(path, generate_signing_key())
        except KeyFileError as exc:
            if isinstance(exc.__cause__, FileExistsError):
                return  # created meanwhile by another process: load that one
            raise ConfigError(f"device key {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"device key {path}: cannot create: {exc.strerror}") from exc
        log.info("device key %s created", path)
