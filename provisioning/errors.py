"""Exception tree of the provisioning package (keys and signed tokens)."""

from __future__ import annotations

from enum import StrEnum


class ProvisioningError(Exception):
    """Base of every error raised by :mod:`provisioning`."""


class KeyFileError(ProvisioningError, OSError):
    """A key file could not be read, written or parsed."""


class TokenFault(StrEnum):
    """Why a signed token was rejected. Values are stable: they appear in events."""

    MALFORMED = "malformed"
    BAD_ALGORITHM = "bad_algorithm"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_KEY = "unknown_key"
    KEY_NOT_VALID = "key_not_valid"  # a trusted key used outside its validity window
    BAD_SIGNATURE = "bad_signature"
    WRONG_AUDIENCE = "wrong_audience"
    MISSING_CLAIM = "missing_claim"
    BAD_CLAIMS = "bad_claims"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"


class TokenRejected(ProvisioningError, ValueError):
    """A signed token failed verification; :attr:`fault` says which check failed."""

    def __init__(self, fault: TokenFault, detail: str) -> None:
        super().__init__(f"{fault.value}: {detail}")
        self.fault = fault
        self.detail = detail
