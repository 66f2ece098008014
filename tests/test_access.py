"""Access policy: grants by compartment or group, skill badges, unknown compartments."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.access import AccessPolicy, Reason
from edge.config import CompartmentConfig, IssuerKey, TrustConfig
from firmware_bridge.badge_reader import BadgeScan
from provisioning.badges import issue_badge
from provisioning.keys import public_key_b64

NOW = 1_800_000_000
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
        ("B1", {"groups": ("batteries",)}, Reason.MISSING_SKILL),
        ("B1", {"groups": ("batteries",), "skills": ("battery-handling",)}, Reason.GRANTED),
        ("C7", {"compartments": ("C7",)}, Reason.UNKNOWN_COMPARTMENT),
    ],
)
def test_policy_decisions(compartment: str, grants: dict[str, tuple[str, ...]],
                          reason: Reason) -> None:
    decision = POLICY.decide(scan(compartment, **grants), now=NOW)
    assert decision.reason is reason
    assert decision.granted is (reason is Reason.GRANTED)


def test_denial_event_names_member_and_missing_skills() -> None:
    decision = POLICY.decide(scan("B1", groups=("batteries",)), now=NOW)
    assert decision.event_type == "access.denied"
    assert decision.event_fields() == {
        "compartment": "B1", "reason": "missing_skill",
        "member": "ada", "badge_id": decision.badge.badge_id if decision.badge else None,
        "missing_skills": ["battery-handling"],
    }


def test_bad_token_maps_to_its_reason_without_member() -> None:
    decision = POLICY.decide(BadgeScan("A1", "not.a.token"), now=NOW)
    assert decision.reason is Reason.MALFORMED
    assert "member" not in decision.event_fields()
