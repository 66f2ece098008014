"""Access decisions: may this badge open that compartment (or run audit mode), and why not.

Pure policy, no I/O: :meth:`AccessPolicy.decide` takes a scan and one clock reading and
returns a :class:`Decision` whose :class:`~edge.reasons.Reason` is a stable code carried
in the audit event. The rules, in order (the first that fails decides; docs/badges.md):

1. the compartment exists (or the target is the ``!audit`` action);
2. the badge verifies: EdDSA, typ, a trusted key valid now, site, validity period;
3. its lifetime (``exp - min(iat, nbf)``) is within the site's cap;
4. the denylist does not revoke it;
5. the clock is trusted, unless the badge allows untrusted time (and has no windows);
6. it grants the compartment (by id or group) and holds every skill badge the
   compartment needs at the minimum level, or it carries ``service`` (maintainers); for
   ``!audit`` it carries ``audit``;
7. the local time falls within one of its weekly windows, if it has any.

A use limit is the agent's last check (:class:`~edge.uses.UseLedger`): it needs a write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from edge.clock import Reading, TimeQuality
from edge.config import AccessConfig, CompartmentConfig
from edge.denylist import DenylistStore
from edge.reasons import CREDENTIAL_FAILURES, Reason, fault_reason
from firmware_bridge.badge_reader import BadgeScan
from provisioning.badges import AUDIT, SERVICE, Badge, BadgeVerifier
from provisioning.errors import TokenRejected
from provisioning.tokens import KeyRing

__all__ = ["AUDIT_TARGET", "CREDENTIAL_FAILURES", "AccessPolicy", "Decision", "Reason"]

AUDIT_TARGET = "!audit"  # the reader target that asks for audit mode


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one scan. ``badge`` is set when the badge itself verified;
    ``via`` says what granted it: ``badge`` (its grants), ``service`` or ``audit``."""

    compartment: str
    reason: Reason
    badge: Badge | None = None
    missing_badges: tuple[tuple[str, int], ...] = ()
    via: str | None = None
    details: tuple[str, ...] = ()  # what is wrong, for battery_not_ready

    @property
    def granted(self) -> bool:
        return self.reason is Reason.GRANTED

    @property
    def event_type(self) -> str:
        return "access.granted" if self.granted else "access.denied"

    def refused(self, reason: Reason, details: tuple[str, ...] = ()) -> Decision:
        """This decision turned into a denial for ``reason`` (e.g. ``used_up``)."""
        return replace(self, reason=reason, via=None, details=details)

    def event_fields(self) -> dict[str, object]:
        """The fields of the audit event recording this decision."""
        event: dict[str, object] = {"compartment": self.compartment,
                                    "reason": self.reason.value}
        if self.via is not None:
            event["via"] = self.via
        if self.badge is not None:
            event["member"] = self.badge.member
            event["badge_id"] = self.badge.badge_id
            if self.badge.use_limit is not None:
                event["use_limit"] = self.badge.use_limit
        if self.missing_badges:
            event["missing_badges"] = dict(self.missing_badges)
        if self.details:
            event["details"] = list(self.details)
        return event


class AccessPolicy:
    """Decides scans for one site from its trusted issuer keys and compartment policies.

    ``keys`` is a key ring, or a callable returning the ring in force (a trust store's,
    which a trust bundle may replace at any time).
    """

    def __init__(
        self, site: str, compartments: tuple[CompartmentConfig, ...], *,
        keys: KeyRing | Callable[[], KeyRing], access: AccessConfig | None = None,
        leeway_s: float = 60.0, denylist: DenylistStore | None = None,
    ) -> None:
        self._site = site
        self._keys = keys
        self._leeway_s = leeway_s
        self._ring: KeyRing | None = None
        self._verifier: BadgeVerifier | None = None
        self._access = access or AccessConfig()
        self._zone = self._access.zone
        self._compartments = {c.id: c for c in compartments}
        self._denylist = denylist

    def _badge_verifier(self) -> BadgeVerifier:
        ring = self._keys() if callable(self._keys) else self._keys
        if self._verifier is None or ring is not self._ring:
            self._ring = ring
            self._verifier = BadgeVerifier(ring, site=self._site, leeway_s=self._leeway_s)
        return self._verifier

    def decide(self, scan: BadgeScan, *, now: Reading) -> Decision:
        """Verify the badge in ``scan`` and check it against the target's policy."""
        target = scan.compartment
        compartment = self._compartments.get(target)
        if compartment is None and target != AUDIT_TARGET:
            return Decision(target, Reason.UNKNOWN_COMPARTMENT)
        try:
            badge = self._badge_verifier().verify(scan.credential, now=now.ts)
        except TokenRejected as exc:
            return Decision(target, fault_reason(exc.fault))
        return self._check(badge, target, compartment, now)

    def authorise(self, token: str, *, now: Reading, what: str,
                  allowed: Callable[[Badge], bool]) -> Decision:
        """A maintainer's badge for something other than a compartment (a calibration):
        verified, then rules 3 to 5 and 7 as for a scan, then ``allowed(badge)`` in place
        of the compartment grant. ``what`` names it in the decision."""
        try:
            badge = self._badge_verifier().verify(token, now=now.ts)
        except TokenRejected as exc:
            return Decision(what, fault_reason(exc.fault))
        refusal = self._refusal(badge, now)
        if refusal is not None:
            return Decision(what, refusal, badge)
        if not allowed(badge):
            return Decision(what, Reason.NOT_GRANTED, badge)
        if badge.windows and not self._in_window(badge, now.ts):
            return Decision(what, Reason.OUTSIDE_WINDOW, badge)
        return Decision(what, Reason.GRANTED, badge, via="maintainer")

    def _check(self, badge: Badge, target: str, compartment: CompartmentConfig | None,
               now: Reading) -> Decision:
        """The policy, once the badge itself has verified; the first failing rule wins."""
        refusal = self._refusal(badge, now)
        if refusal is not None:
            return Decision(target, refusal, badge)
        decision = self._grant(badge, target, compartment)
        if decision.granted and badge.windows and not self._in_window(badge, now.ts):
            return decision.refused(Reason.OUTSIDE_WINDOW)
        return decision

    def _refusal(self, badge: Badge, now: Reading) -> Reason | None:
        """Rules 3 to 5: what refuses this badge whatever it asks for."""
        if badge.lifetime_s > self._access.max_badge_lifetime_s:
            return Reason.LIFETIME_EXCEEDED
        if self._denylist is not None and self._denylist.revokes(badge, now=now.ts):
            return Reason.REVOKED
        if now.quality is TimeQuality.UNTRUSTED and (
                not badge.allows_untrusted_time or badge.windows):
            return Reason.CLOCK_UNTRUSTED
        return None

    def _grant(self, badge: Badge, target: str,
               compartment: CompartmentConfig | None) -> Decision:
        """Rule 6: the badge's grants, skill levels and maintainer permissions."""
        if compartment is None:  # the audit action
            if badge.may(AUDIT):
                return Decision(target, Reason.GRANTED, badge, via=AUDIT)
            return Decision(target, Reason.NOT_GRANTED, badge)
        granted = target in badge.compartments or (
            compartment.group is not None and compartment.group in badge.groups)
        missing = tuple((skill, level) for skill, level in compartment.skills.items()
                        if badge.skill_level(skill) < level)
        if granted and not missing:
            return Decision(target, Reason.GRANTED, badge, via="badge")
        if badge.may(SERVICE):  # maintainers open any compartment; skills are not checked
            return Decision(target, Reason.GRANTED, badge, via=SERVICE)
        if not granted:
            return Decision(target, Reason.NOT_GRANTED, badge)
        return Decision(target, Reason.MISSING_BADGE, badge, missing)

    def _in_window(self, badge: Badge, ts: float) -> bool:
        local = datetime.fromtimestamp(ts, self._zone)
        return any(window.contains(local) for window in badge.windows)

