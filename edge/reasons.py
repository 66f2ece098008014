"""Why a request was granted or refused: one enum for badges, commands and documents.

The values are stable: they appear in ``access.*`` and ``command.rejected`` events and
in command replies, and docs/badges.md lists them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from provisioning.errors import TokenFault


class Reason(StrEnum):
    """Why access (or a command) was granted or refused."""

    GRANTED = "granted"
    UNKNOWN_COMPARTMENT = "unknown_compartment"
    MALFORMED = "malformed"
    BAD_ALGORITHM = "bad_algorithm"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_KEY = "unknown_key"
    KEY_NOT_VALID = "key_not_valid"
    BAD_SIGNATURE = "bad_signature"
    WRONG_SITE = "wrong_site"
    WRONG_DEVICE = "wrong_device"
    MISSING_CLAIM = "missing_claim"
    BAD_CLAIMS = "bad_claims"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    LIFETIME_EXCEEDED = "lifetime_exceeded"
    NOT_GRANTED = "not_granted"
    MISSING_BADGE = "missing_badge"
    OUTSIDE_WINDOW = "outside_window"
    REVOKED = "revoked"
    REPLAYED = "replayed"
    USED_UP = "used_up"
    CLOCK_UNTRUSTED = "clock_untrusted"
    LOCKED_OUT = "locked_out"
    UNSIGNED = "unsigned"
    STORAGE_FAULT = "storage_fault"  # a use or a nonce could not be recorded: fail closed
    STALE_TIME = "stale_time"  # a signed time behind the time floor
    BATTERY_NOT_READY = "battery_not_ready"  # the bay's battery may not go out on loan


def fault_reason(fault: TokenFault, *, audience: Reason = Reason.WRONG_SITE) -> Reason:
    """The reason for a token refused with ``fault``; ``audience`` names a wrong ``aud``
    (a badge's is the site, a command's the device)."""
    if fault is TokenFault.WRONG_AUDIENCE:
        return audience
    return _FAULT_REASONS[fault]


_FAULT_REASONS: Mapping[TokenFault, Reason] = {
    TokenFault.MALFORMED: Reason.MALFORMED,
    TokenFault.BAD_ALGORITHM: Reason.BAD_ALGORITHM,
    TokenFault.WRONG_TYPE: Reason.WRONG_TYPE,
    TokenFault.UNKNOWN_KEY: Reason.UNKNOWN_KEY,
    TokenFault.KEY_NOT_VALID: Reason.KEY_NOT_VALID,
    TokenFault.BAD_SIGNATURE: Reason.BAD_SIGNATURE,
    TokenFault.MISSING_CLAIM: Reason.MISSING_CLAIM,
    TokenFault.BAD_CLAIMS: Reason.BAD_CLAIMS,
    TokenFault.EXPIRED: Reason.EXPIRED,
    TokenFault.NOT_YET_VALID: Reason.NOT_YET_VALID,
}

# Failures that say someone is guessing or forging, not a member with a stale badge.
CREDENTIAL_FAILURES = frozenset({
    Reason.MALFORMED, Reason.BAD_ALGORITHM, Reason.WRONG_TYPE, Reason.UNKNOWN_KEY,
    Reason.BAD_SIGNATURE, Reason.WRONG_SITE, Reason.MISSING_CLAIM, Reason.BAD_CLAIMS,
})
