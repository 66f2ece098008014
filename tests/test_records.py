"""Device-signed records: what verifies, what is refused, and that no mutation verifies."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.calibration import Coefficients, check_quality, fit_colocation
from provisioning.errors import TokenFault, TokenRejected
from provisioning.keys import thumbprint_kid
from provisioning.records import (
    CALIBRATION_TYP,
    MAX_POINTS,
    MAX_RECORD_CHARS,
    SWAP_TYP,
    Battery,
    LinearCoefficients,
    RecordVerifier,
    sign_calibration,
    sign_swap,
    truncated,
)
from provisioning.tokens import sign_token

SITE = "elm-street"
NOW = 1_800_000_000
DEVICE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(40, 72)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(41, 73)))
KID = thumbprint_kid(DEVICE_KEY.public_key())
VERIFIER = RecordVerifier({KID: DEVICE_KEY.public_key()}, site=SITE, device="pi-elm-01")


def calibration(key: Ed25519PrivateKey = DEVICE_KEY, **overrides: Any) -> str:
    args: dict[str, Any] = {
        "device": "pi-elm-01", "site": SITE, "now": NOW, "maintainer": "mia",
        "badge_id": "b4dg3Id", "sensor": "pm-1", "sensor_kind": "pms5003", "method": "zero",
        "reference": [0.0, 0.0, 0.0], "raw": [2.5, 3.0, 3.5],
        "before": Coefficients.identity(), "after": Coefficients.linear(-3.0, 1.0),
        "residuals": [-0.5, 0.0, 0.5], "tolerance": 1.0, "passed": True, "version": 1,
    }
    args.update(overrides)
    return sign_calibration(key, **args)


def swap(key: Ed25519PrivateKey = DEVICE_KEY, **overrides: Any) -> str:
    args: dict[str, Any] = {
        "device": "pi-elm-01", "site": SITE, "now": NOW, "member": "ada", "badge_id": "xYz12",
        "bay": "B2", "taken": {"id": "bat-07", "soc_pct": 96.5, "cycles": 41, "voltage_v": 41.2},
        "returned": {"id": "bat-03", "soc_pct": 18, "cycles": 40, "voltage_v": None},
    }
    args.update(overrides)
    return sign_swap(key, **args)


def rejected(check: Any, token: str) -> TokenFault:
    with pytest.raises(TokenRejected) as caught:
        check(token)
    return caught.value.fault


def test_calibration_round_trips_to_domain_names() -> None:
    record = VERIFIER.verify_calibration(calibration())
    assert (record.device, record.site, record.issued_at) == ("pi-elm-01", SITE, NOW)
    assert (record.maintainer, record.badge_id, record.sensor) == ("mia", "b4dg3Id", "pm-1")
    assert (record.sensor_kind, record.method, record.version) == ("pms5003", "zero", 1)
    assert record.reference == (0.0, 0.0, 0.0)
    assert record.raw == (2.5, 3.0, 3.5)
    assert record.residuals == (-0.5, 0.0, 0.5)
    assert (record.tolerance, record.passed) == (1.0, True)
    assert Coefficients.from_claim(record.before) == Coefficients.identity()
    assert Coefficients.from_claim(record.after) == Coefficients.linear(-3.0, 1.0)
    assert record.after == LinearCoefficients(offset=-3.0, gain=1.0)


def test_swap_round_trips_and_either_battery_may_be_unknown() -> None:
    record = VERIFIER.verify_swap(swap())
    assert (record.member, record.badge_id, record.bay) == ("ada", "xYz12", "B2")
    assert record.taken == Battery(id="bat-07", soc_pct=96.5, cycles=41, voltage_v=41.2)
    assert record.returned is not None
    assert (record.returned.battery_id, record.returned.voltage_v) == ("bat-03", None)
    taken_only = VERIFIER.verify_swap(swap(taken=record.taken, returned=None))
    assert (taken_only.taken, taken_only.returned) == (record.taken, None)
    returned_only = VERIFIER.verify_swap(swap(taken=None))
    assert (returned_only.taken, returned_only.returned) == (None, record.returned)


def test_records_carry_the_device_thumbprint_and_their_own_type() -> None:
    assert jwt.get_unverified_header(calibration()) == {
        "alg": "EdDSA", "kid": KID, "typ": CALIBRATION_TYP}
    assert jwt.get_unverified_header(swap(kid=KID))["typ"] == SWAP_TYP
    with pytest.raises(ValueError, match="not the device key's thumbprint"):
        swap(kid="device-1")


def test_a_record_signed_by_another_key_under_the_pinned_kid_is_refused() -> None:
    claims = jwt.decode(calibration(), options={"verify_signature": False})
    forged = sign_token(claims, OTHER_KEY, kid=KID, typ=CALIBRATION_TYP)
    assert rejected(VERIFIER.verify_calibration, forged) is TokenFault.BAD_SIGNATURE
    assert rejected(VERIFIER.verify_swap, swap(OTHER_KEY)) is TokenFault.UNKNOWN_KEY


def test_one_kind_of_record_is_not_accepted_as_the_other() -> None:
    assert rejected(VERIFIER.verify_swap, calibration()) is TokenFault.WRONG_TYPE
    assert rejected(VERIFIER.verify_calibration, swap()) is TokenFault.WRONG_TYPE


def test_a_record_for_another_site_or_from_another_device_is_refused() -> None:
    assert rejected(VERIFIER.verify_calibration, calibration(site="oak-lane")) \
        is TokenFault.WRONG_AUDIENCE
    assert rejected(VERIFIER.verify_swap, swap(device="pi-oak-02")) is TokenFault.BAD_CLAIMS
    unbound = RecordVerifier({KID: DEVICE_KEY.public_key()}, site=SITE)
    assert unbound.verify_swap(swap(device="pi-oak-02")).device == "pi-oak-02"


def test_no_clock_is_involved_an_old_record_still_verifies() -> None:
    assert VERIFIER.verify_calibration(calibration(now=1_000_000_000)).issued_at == 1_000_000_000


def test_a_missing_claim_is_refused() -> None:
    claims = jwt.decode(calibration(), options={"verify_signature": False})
    del claims["ok"]
    token = sign_token(claims, DEVICE_KEY, kid=KID, typ=CALIBRATION_TYP)
    assert rejected(VERIFIER.verify_calibration, token) is TokenFault.MISSING_CLAIM


@pytest.mark.parametrize(("claim", "value"), [
    ("ok", 1), ("ver", 0), ("ver", "1"), ("tol", -1.0), ("res", [0.5, "x", 0.1]),
    ("ref", [0.0, float("nan"), 0.0]), ("raw", [1.0, 2.0]), ("mth", "guess"),
    ("aft", {"model": "linear", "offset": 0.0, "gain": -1.0}),
    ("aft", {"model": "piecewise", "points": [[1.0, 2.0], [1.0, 3.0]]}),
    ("bef", {"model": "cubic"}), ("sen", "pm 1"),
])
def test_wrongly_typed_claims_are_refused_by_the_verifier(claim: str, value: object) -> None:
    claims = jwt.decode(calibration(), options={"verify_signature": False})
    claims[claim] = value
    token = sign_token(claims, DEVICE_KEY, kid=KID, typ=CALIBRATION_TYP)
    assert rejected(VERIFIER.verify_calibration, token) is TokenFault.BAD_CLAIMS


@pytest.mark.parametrize(("overrides", "named"), [
    ({"passed": True, "residuals": [-0.5, 0.0, 1.5]}, "claim ok"),
    ({"reference": [0.0, 1.0, 0.0]}, "claim ref"),
    ({"raw": [2.5, 3.0]}, "claim raw"),
    ({"residuals": [0.1]}, "claim res"),
    ({"residuals": [0.1, float("inf"), 0.1]}, "claim res.1"),
    ({"tolerance": float("nan")}, "claim tol"),
    ({"version": 0}, "claim ver"),
    ({"after": {"model": "linear", "offset": 0.0, "gain": 0.0}}, "claim aft.linear.gain"),
    ({"sensor": ""}, "claim sen"),
    ({"method": "eyeball"}, "claim mth"),
])
def test_the_signer_refuses_what_a_verifier_refuses_naming_the_claim(
        overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        calibration(**overrides)


@pytest.mark.parametrize(("overrides", "named"), [
    ({"taken": None, "returned": None}, "claim inn: .*taken, the one returned, or both"),
    ({"taken": {"id": "b", "soc_pct": 50, "cycles": 1.5, "voltage_v": None}}, "claim out.cycles"),
    ({"taken": {"id": "b", "soc_pct": 101, "cycles": 1, "voltage_v": None}}, "claim out.soc_pct"),
    ({"returned": {"id": "b", "soc_pct": 50, "cycles": -1, "voltage_v": 40.0}}, "claim inn.cycles"),
    ({"returned": {"id": "b", "soc_pct": 50, "cycles": 1, "voltage": 40.0}}, "claim inn.voltage"),
    ({"bay": "B 2"}, "claim bay"),
])
def test_the_swap_signer_refuses_bad_claims(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        swap(**overrides)


def test_residuals_are_cut_toward_zero_so_a_pass_stays_consistent() -> None:
    assert (truncated(0.123456), truncated(-0.123456), truncated(2.0)) == (0.1234, -0.1234, 2.0)
    token = calibration(residuals=[-0.99999, 0.123456789, 1.0], tolerance=1.0)
    assert VERIFIER.verify_calibration(token).residuals == (-0.9999, 0.1234, 1.0)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_truncation_never_grows_a_residual(value: float) -> None:
    assert abs(truncated(value)) <= abs(value)
    # Less than one unit of the 4th decimal, give or take the float rounding of the result.
    assert abs(truncated(value) - value) <= 1e-4 * (1 + 1e-9) + abs(value) * 1e-15


def typical_calibration() -> str:
    """20 co-location points: readings and references to 0.1, full-precision fit."""
    reference = [round(1.7 + 4.3 * i, 1) for i in range(20)]
    raw = [round(f / 1.13 - 2.4 + (0.3 if i % 3 else -0.2), 1) for i, f in enumerate(reference)]
    fitted = fit_colocation(raw, reference)
    quality = check_quality(fitted, raw, reference, 2.0)
    return calibration(method="colocation", reference=reference, raw=raw,
                       before=Coefficients.linear(-1.9375, 1.0869565217391304), after=fitted,
                       residuals=quality.residuals, tolerance=2.0, passed=quality.passed,
                       version=7)


def test_a_typical_calibration_stays_well_under_the_badge_token_limit() -> None:
    token = typical_calibration()
    assert len(token) < 1600
    assert VERIFIER.verify_calibration(token).version == 7


def test_the_largest_calibration_fits_the_record_bound() -> None:
    """64 points at full float precision, piecewise before and after."""
    reference = [1 / 3 + 7.123456789012345 * i for i in range(MAX_POINTS)]
    raw = [-1 / 7 + 6.987654321098765 * i for i in range(MAX_POINTS)]
    fitted = fit_colocation(raw, reference, model="piecewise")
    quality = check_quality(fitted, raw, reference, 1.0)
    token = calibration(method="colocation", reference=reference, raw=raw, before=fitted,
                        after=fitted, residuals=[-1.2345678e-3] * MAX_POINTS, tolerance=1.0,
                        passed=quality.passed)
    assert len(token) < MAX_RECORD_CHARS
    assert VERIFIER.verify_calibration(token).after == VERIFIER.verify_calibration(token).before
    with pytest.raises(ValueError, match="claim ref"):
        calibration(method="colocation", reference=[*reference, 500.0], raw=[*raw, 500.0],
                    residuals=[0.0] * (MAX_POINTS + 1), passed=False)


VALID_CALIBRATION = calibration()
VALID_SWAP = swap()


@settings(max_examples=300, deadline=None)
@given(which=st.sampled_from(["calibration", "swap"]), data=st.data())
def test_no_single_character_mutation_of_a_record_verifies(which: str, data: st.DataObject) -> None:
    valid, check = ((VALID_CALIBRATION, VERIFIER.verify_calibration) if which == "calibration"
                    else (VALID_SWAP, VERIFIER.verify_swap))
    position = data.draw(st.integers(0, len(valid) - 1))
    replacement = data.draw(st.characters(codec="ascii"))
    mutated = valid[:position] + replacement + valid[position + 1:]
    if mutated == valid:
        return  # the one mutation that changes nothing
    with pytest.raises(TokenRejected):
        check(mutated)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.booleans())
def test_random_text_never_crashes_the_verifier(text: str, as_swap: bool) -> None:
    with pytest.raises(TokenRejected):
        (VERIFIER.verify_swap if as_swap else VERIFIER.verify_calibration)(text)
