"""Access policy, table-driven: one row per way a scan can end, and the rules' order.

Every :class:`Reason` is covered: the policy's own here, the rest where they arise
(``AGENT_LEVEL`` below names the test that shows each).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.access import AUDIT_TARGET, AccessPolicy, Decision, Reason
from edge.clock import Reading, TimeQuality
from edge.config import AccessConfig, CompartmentConfig
from edge.denylist import DenylistStore
from firmware_bridge.badge_reader import BadgeScan
from provisioning.badges import BADGE_TYP, issue_badge
from provisioning.commands import COMMAND_TYP
from provisioning.denylist import issue_denylist
from provisioning.tokens import TrustedKey, sign_token

NOW = 1_800_000_000  # Friday 2027-01-15 08:00 UTC (and London)
DAY = 86400
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RETIRED = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
KEYS = {"k1": TrustedKey(KEY.public_key()),
        "k0": TrustedKey(RETIRED.public_key(), not_after=NOW - DAY)}
COMPARTMENTS = (
    CompartmentConfig(id="A1", solenoid_pin=17, door_pin=27, group="hand-tools"),
    CompartmentConfig(id="B1", solenoid_pin=22, door_pin=23, group="batteries",
                      skills={"battery-handling": 2}),
)
ACCESS = AccessConfig(max_badge_lifetime_s=7 * DAY, timezone="Europe/London")
SYNCED = Reading(NOW, TimeQuality.SYNCHRONISED)
UNTRUSTED = Reading(NOW, TimeQuality.UNTRUSTED)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> AccessPolicy:
    path = tmp_path_factory.mktemp("denylist") / "denylist.jws"
    denylist = DenylistStore(path, KEYS, site="elm-street")
    denylist.update(issue_denylist(KEY, kid="k1", issuer="coop", site="elm-street", version=1,
                                   entries=[{"jti": "stolen-1", "until": NOW + DAY}], now=NOW))
    return AccessPolicy("elm-street", COMPARTMENTS, keys=KEYS, access=ACCESS, denylist=denylist)


def badge(key: Ed25519PrivateKey = KEY, kid: str = "k1", **claims: object) -> str:
    args: dict[str, object] = {"issuer": "coop", "member": "ada", "site": "elm-street",
                               "now": NOW, "lifetime_s": DAY, "groups": ("hand-tools",)}
    args.update(claims)
    return issue_badge(key, kid=kid, **args)  # type: ignore[arg-type]  # test helper


def raw(claims: dict[str, object], *, typ: str = BADGE_TYP) -> str:
    base: dict[str, object] = {"iss": "coop", "sub": "ada", "aud": "elm-street", "iat": NOW,
                               "exp": NOW + DAY, "jti": "raw-1", "grp": ["hand-tools"]}
    return sign_token({k: v for k, v in {**base, **claims}.items() if v is not None},
                      KEY, kid="k1", typ=typ)


Row = tuple[str, str, Callable[[], str], Reading, Reason, str | None]
ROWS: list[Row] = [
    # id, target, token, clock, reason, via
    ("group grant", "A1", badge, SYNCED, Reason.GRANTED, "badge"),
    ("compartment grant", "A1", lambda: badge(groups=(), compartments=("A1",)), SYNCED,
     Reason.GRANTED, "badge"),
    ("skill level above minimum", "B1",
     lambda: badge(groups=("batteries",), skills={"battery-handling": 3}), SYNCED,
     Reason.GRANTED, "badge"),
    ("service permission", "B1", lambda: badge(groups=(), permissions=("service",)), SYNCED,
     Reason.GRANTED, "service"),
    ("audit permission", AUDIT_TARGET, lambda: badge(permissions=("audit",)), SYNCED,
     Reason.GRANTED, "audit"),
    ("untrusted time allowed", "A1", lambda: badge(allows_untrusted_time=True), UNTRUSTED,
     Reason.GRANTED, "badge"),
    ("inside a window", "A1", lambda: badge(windows=("5 08:00-09:00",)), SYNCED,
     Reason.GRANTED, "badge"),
    ("floor time is trusted", "A1", badge, Reading(NOW, TimeQuality.FLOOR),
     Reason.GRANTED, "badge"),
    ("unknown compartment", "C7", lambda: badge(compartments=("C7",)), SYNCED,
     Reason.UNKNOWN_COMPARTMENT, None),
    ("not a JWS", "A1", lambda: "not.a.token", SYNCED, Reason.MALFORMED, None),
    ("HS256", "A1", lambda: jwt.encode({"sub": "ada"}, "k" * 32, algorithm="HS256",
                                       headers={"kid": "k1", "typ": BADGE_TYP}), SYNCED,
     Reason.BAD_ALGORITHM, None),
    ("command typ", "A1", lambda: raw({}, typ=COMMAND_TYP), SYNCED, Reason.WRONG_TYPE, None),
    ("unknown kid", "A1", lambda: badge(kid="k9"), SYNCED, Reason.UNKNOWN_KEY, None),
    ("retired key", "A1", lambda: badge(RETIRED, kid="k0"), SYNCED, Reason.KEY_NOT_VALID, None),
    ("stranger's key, trusted kid", "A1", lambda: badge(STRANGER), SYNCED,
     Reason.BAD_SIGNATURE, None),
    ("other site", "A1", lambda: badge(site="oak-lane"), SYNCED, Reason.WRONG_SITE, None),
    ("no jti", "A1", lambda: raw({"jti": None}), SYNCED, Reason.MISSING_CLAIM, None),
    ("groups not a list", "A1", lambda: raw({"grp": 5}), SYNCED, Reason.BAD_CLAIMS, None),
    ("bad window", "A1", lambda: raw({"win": ["8 08:00-09:00"]}), SYNCED, Reason.BAD_CLAIMS,
     None),
    ("expired", "A1", lambda: badge(now=NOW - 3 * DAY), SYNCED, Reason.EXPIRED, None),
    ("not yet valid", "A1", lambda: badge(not_before=NOW + DAY), SYNCED,
     Reason.NOT_YET_VALID, None),
    ("lifetime above the cap", "A1", lambda: badge(lifetime_s=8 * DAY), SYNCED,
     Reason.LIFETIME_EXCEEDED, None),
    ("issued long before it starts", "A1",
     lambda: badge(not_before=NOW + 6 * DAY, lifetime_s=2 * DAY),
     Reading(NOW + 7 * DAY, TimeQuality.SYNCHRONISED), Reason.LIFETIME_EXCEEDED, None),
    ("issued in the future", "A1", lambda: raw({"iat": NOW + DAY, "nbf": NOW}), SYNCED,
     Reason.NOT_YET_VALID, None),
    ("iat a string", "A1", lambda: raw({"iat": str(NOW)}), SYNCED, Reason.BAD_CLAIMS, None),
    ("other group", "A1", lambda: badge(groups=("batteries",)), SYNCED, Reason.NOT_GRANTED,
     None),
    ("audit without permission", AUDIT_TARGET, lambda: badge(permissions=("service",)),
     SYNCED, Reason.NOT_GRANTED, None),
    ("skill level too low", "B1",
     lambda: badge(groups=("batteries",), skills={"battery-handling": 1}), SYNCED,
     Reason.MISSING_BADGE, None),
    ("no skill badge", "B1", lambda: badge(groups=("batteries",)), SYNCED,
     Reason.MISSING_BADGE, None),
    ("window ends as it starts", "A1", lambda: badge(windows=("5 07:00-08:00",)), SYNCED,
     Reason.OUTSIDE_WINDOW, None),
    ("weekday window on a weekend day", "A1", lambda: badge(windows=("1234 00:00-24:00",)),
     SYNCED, Reason.OUTSIDE_WINDOW, None),
    ("denylisted", "A1", lambda: badge(badge_id="stolen-1"), SYNCED, Reason.REVOKED, None),
    ("untrusted time", "A1", badge, UNTRUSTED, Reason.CLOCK_UNTRUSTED, None),
    ("untrusted time, windows", "A1",
     lambda: badge(allows_untrusted_time=True, windows=("5 08:00-09:00",)), UNTRUSTED,
     Reason.CLOCK_UNTRUSTED, None),
]

# Reasons decided outside the policy, and the tests that show them.
AGENT_LEVEL = {
    Reason.USED_UP: "test_agent_access:test_single_use_badge_is_consumed_durably",
    Reason.LOCKED_OUT: "test_agent:test_repeated_forgeries_lock_the_reader_and_raise_an_alarm",
    Reason.REPLAYED: "test_signed_commands:test_replayed_command_is_refused_after_restart",
    Reason.UNSIGNED: "test_signed_commands:test_signed_commands_act_once_and_bad_ones_are_refused",
    Reason.WRONG_DEVICE:
        "test_signed_commands:test_signed_commands_act_once_and_bad_ones_are_refused",
    Reason.STORAGE_FAULT: "test_agent_access:test_a_use_that_cannot_be_recorded_is_refused",
    Reason.STALE_TIME: "test_signed_commands:test_a_signed_time_behind_the_floor_is_refused",
    Reason.BATTERY_NOT_READY: "test_batteries:test_a_battery_bay_gates_the_loan_and_signs_the_swap",
}


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_every_policy_reason(policy: AccessPolicy, row: Row) -> None:
    _, target, token, clock, reason, via = row
    decision = policy.decide(BadgeScan(target, token()), now=clock)
    assert (decision.reason, decision.via) == (reason, via)
    assert decision.granted is (reason is Reason.GRANTED)
    assert decision.event_type == ("access.granted" if decision.granted else "access.denied")


def test_every_reason_is_covered() -> None:
    tested = {row[4] for row in ROWS} | set(AGENT_LEVEL)
    assert tested == set(Reason), set(Reason) - tested
    for where in AGENT_LEVEL.values():
        module, name = where.split(":")
        assert callable(getattr(importlib.import_module(f"tests.{module}"), name)), where


def test_denial_event_names_member_and_the_levels_missing(policy: AccessPolicy) -> None:
    token = badge(groups=("batteries",), skills={"battery-handling": 1})
    decision = policy.decide(BadgeScan("B1", token), now=SYNCED)
    assert decision.badge is not None
    assert decision.event_fields() == {
        "compartment": "B1", "reason": "missing_badge", "member": "ada",
        "badge_id": decision.badge.badge_id, "missing_badges": {"battery-handling": 2},
    }


def test_bad_token_event_has_no_member(policy: AccessPolicy) -> None:
    fields = policy.decide(BadgeScan("A1", "not.a.token"), now=SYNCED).event_fields()
    assert fields == {"compartment": "A1", "reason": "malformed"}


def test_rules_apply_in_order(policy: AccessPolicy) -> None:
    """A revoked badge is revoked even when the clock is untrusted and it grants nothing."""
    token = badge(badge_id="stolen-1", groups=("batteries",))
    assert policy.decide(BadgeScan("A1", token), now=UNTRUSTED).reason is Reason.REVOKED


def test_windows_are_in_the_site_time_zone() -> None:
    new_york = AccessPolicy("elm-street", COMPARTMENTS, keys=KEYS,
                            access=AccessConfig(timezone="America/New_York"))
    # 08:00 UTC on a Friday in January is 03:00 in New York.
    inside = badge(windows=("5 03:00-04:00",))
    outside = badge(windows=("5 08:00-09:00",))
    assert new_york.decide(BadgeScan("A1", inside), now=SYNCED).granted
    assert new_york.decide(BadgeScan("A1", outside), now=SYNCED).reason \
        is Reason.OUTSIDE_WINDOW


def test_a_key_ring_source_is_read_at_each_decision() -> None:
    ring: dict[str, TrustedKey] = {}
    policy = AccessPolicy("elm-street", COMPARTMENTS, keys=lambda: ring)
    token = badge()
    assert policy.decide(BadgeScan("A1", token), now=SYNCED).reason is Reason.UNKNOWN_KEY
    ring = {"k1": TrustedKey(KEY.public_key())}
    assert policy.decide(BadgeScan("A1", token), now=SYNCED).granted


def test_used_up_turns_a_grant_into_a_denial() -> None:
    granted = Decision("A1", Reason.GRANTED, via="badge")
    assert granted.refused(Reason.USED_UP).event_fields() == {
        "compartment": "A1", "reason": "used_up"}

