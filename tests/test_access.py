"""Access policy: grants by compartment or group, skill badges, unknown compartments."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.access import AccessPolicy, Reason
from edge.clock import Reading, TimeQuality
from edge.config import CompartmentConfig, IssuerKey, TrustConfig
from firmware_bridge.badge_reader import BadgeScan
from provisioning.badges import issue_badge
from provisioning.keys import public_key_b64

NOW = 1_800_000_000
AT = Reading(NOW, TimeQuality.FLOOR)
KEY = Ed25519PrivateKey.generate()
POLICY = AccessPolicy(
    "elm-street",
    TrustConfig(issuers=(IssuerKey(kid="k1", public_key=public_key_b64(KEY.public_key())),)),
    (
        CompartmentConfig(id="A1", solenoid_pin=17, door_pin=27, group="hand-tools"),
        CompartmentConfig(id="B1", solenoid_pin=22, door_pin=23, group="batteries",
                          skills=("battery-handling",)),
    ),
)


def scan(compartment: str, **grants: tuple[str, ...]) -> BadgeScan:
    token = issue_badge(KEY, kid="k1", issuer="coop", member="ada", site="elm-street", now=NOW,
                        lifetime_s=3600, **grants)
    return BadgeScan(compartment, token)


@pytest.mark.parametrize(
    ("compartment", "grants", "reason"),
    [
        ("A1", {"compartments": ("A1",)}, Reason.GRANTED),
        ("A1", {"groups": ("hand-tools",)}, Reason.GRANTED),
        ("A1", {"compartments": ("B1",)}, Reason.NOT_GRANTED),
        ("B1", {"groups": ("batteries",)}, Reason.MISSING_BADGE),
        ("B1", {"groups": ("batteries",), "skills": ("battery-handling",)}, Reason.GRANTED),
        ("C7", {"compartments": ("C7",)}, Reason.UNKNOWN_COMPARTMENT),
    ],
)
def test_policy_decisions(compartment: str, grants: dict[str, tuple[str, ...]],
                          reason: Reason) -> None:
    decision = POLICY.decide(scan(compartment, **grants), now=AT)
    assert decision.reason is reason
    assert decision.granted is (reason is Reason.GRANTED)


def test_denial_event_names_member_and_missing_badges() -> None:
    decision = POLICY.decide(scan("B1", groups=("batteries",)), now=AT)
    assert decision.event_type == "access.denied"
    assert decision.event_fields() == {
        "compartment": "B1", "reason": "missing_badge",
        "member": "ada", "badge_id": decision.badge.badge_id if decision.badge else None,
        "missing_badges": ["battery-handling"],
    }


def test_bad_token_maps_to_its_reason_without_member() -> None:
    decision = POLICY.decide(BadgeScan("A1", "not.a.token"), now=AT)
    assert decision.reason is Reason.MALFORMED
    assert "member" not in decision.event_fields()


def test_untrusted_time_refuses_badges_unless_they_allow_it() -> None:
    untrusted = Reading(NOW, TimeQuality.UNTRUSTED)
    ordinary = POLICY.decide(scan("A1", groups=("hand-tools",)), now=untrusted)
    token = issue_badge(KEY, kid="k1", issuer="coop", member="maint", site="elm-street",
                        now=NOW, lifetime_s=3600, groups=("hand-tools",),
                        allows_untrusted_time=True)
    emergency = POLICY.decide(BadgeScan("A1", token), now=untrusted)
    assert ordinary.reason is Reason.CLOCK_UNTRUSTED
    assert ordinary.event_fields()["member"] == "ada"
    assert emergency.reason is Reason.GRANTED


def test_synchronised_time_grants_as_floor_time_does() -> None:
    synced = Reading(NOW, TimeQuality.SYNCHRONISED)
    assert POLICY.decide(scan("A1", groups=("hand-tools",)), now=synced).granted
