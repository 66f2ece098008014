"""Access decisions: may this badge open that compartment, and why (not).

Pure policy, no I/O: :meth:`AccessPolicy.decide` takes a scan and the time and returns a
:class:`Decision` whose :class:`Reason` is a stable code carried in the audit event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from edge.clock import Reading, TimeQuality
from edge.config import CompartmentConfig, TrustConfig
from edge.denylist import DenylistStore
from firmware_bridge.badge_reader import BadgeScan
from provisioning.badges import Badge, BadgeVerifier
from provisioning.errors import TokenFault, TokenRejected
from provisioning.keys import public_key_from_b64


class Reason(StrEnum):
    """Why access was granted or denied; values are stable event fields."""

    GRANTED = "granted"
    UNKNOWN_COMPARTMENT = "unknown_compartment"
    MALFORMED = "malformed"
    BAD_ALGORITHM = "bad_algorithm"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    WRONG_SITE = "wrong_site"
    MISSING_CLAIM = "missing_claim"
    BAD_CLAIMS = "bad_claims"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    NOT_GRANTED = "not_granted"
    MISSING_BADGE = "missing_badge"
    CLOCK_UNTRUSTED = "clock_untrusted"
    REVOKED = "revoked"
    LOCKED_OUT = "locked_out"


_FAULT_REASONS: Mapping[TokenFault, Reason] = {
    TokenFault.MALFORMED: Reason.MALFORMED,
    TokenFault.BAD_ALGORITHM: Reason.BAD_ALGORITHM,
    TokenFault.WRONG_TYPE: Reason.WRONG_TYPE,
    TokenFault.UNKNOWN_KEY: Reason.UNKNOWN_KEY,
    TokenFault.BAD_SIGNATURE: Reason.BAD_SIGNATURE,
    TokenFault.WRONG_AUDIENCE: Reason.WRONG_SITE,
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


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one scan. ``badge`` is set when the badge itself verified."""

    compartment: str
    reason: Reason
    badge: Badge | None = None
    missing_badges: tuple[str, ...] = ()

    @property
    def granted(self) -> bool:
        return self.reason is Reason.GRANTED

    @property
    def event_type(self) -> str:
        return "access.granted" if self.granted else "access.denied"

    def event_fields(self) -> dict[str, object]:
        """The fields of the audit event recording this decision."""
        event: dict[str, object] = {
            "compartment": self.compartment,
            "reason": self.reason.value,
        }
        if self.badge is not None:
            event["member"] = self.badge.member
            event["badge_id"] = self.badge.badge_id
        if self.missing_badges:
            event["missing_badges"] = list(self.missing_badges)
        return event


class AccessPolicy:
    """Decides scans for one site from its trusted issuers and compartment policies."""

    def __init__(
        self, site: str, trust: TrustConfig, compartments: tuple[CompartmentConfig, ...],
        denylist: DenylistStore | None = None,
    ) -> None:
        keys = {issuer.kid: public_key_from_b64(issuer.public_key) for issuer in trust.issuers}
        self._verifier = BadgeVerifier(keys, site=site, leeway_s=trust.leeway_s)
        self._compartments = {c.id: c for c in compartments}
        self._denylist = denylist

    def decide(self, scan: BadgeScan, *, now: Reading) -> Decision:
        """Verify the badge in ``scan`` and check it against the compartment's policy.

        With untrusted time (``now.quality``), a badge's validity period proves nothing,
        so it is refused (``clock_untrusted``) unless it says it may be honoured anyway.
        """
        compartment = self._compartments.get(scan.compartment)
        if compartment is None:
            return Decision(scan.compartment, Reason.UNKNOWN_COMPARTMENT)
        try:
            badge = self._verifier.verify(scan.credential, now=now.ts)
        except TokenRejected as exc:
            return Decision(compartment.id, _FAULT_REASONS[exc.fault])
        return self._check(badge, compartment, now)

    def _check(self, badge: Badge, compartment: CompartmentConfig, now: Reading) -> Decision:
        """The policy, once the badge itself has verified; the first failing rule wins."""
        cid = compartment.id
        if self._denylist is not None and self._denylist.revokes(badge, now=now.ts):
            return Decision(cid, Reason.REVOKED, badge)
        if now.quality is TimeQuality.UNTRUSTED and not badge.allows_untrusted_time:
            return Decision(cid, Reason.CLOCK_UNTRUSTED, badge)
        if cid not in badge.compartments and (
                compartment.group is None or compartment.group not in badge.groups):
            return Decision(cid, Reason.NOT_GRANTED, badge)
        missing = tuple(s for s in compartment.skills if s not in badge.skills)
        if missing:
            return Decision(cid, Reason.MISSING_BADGE, badge, missing)
        return Decision(cid, Reason.GRANTED, badge)
