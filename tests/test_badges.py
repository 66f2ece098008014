"""Badge tokens: what verifies, what is refused and why, and that no mutation verifies."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioning.badges import BADGE_TYP, MAX_LIFETIME_S, BadgeVerifier, issue_badge
from provisioning.errors import TokenFault, TokenRejected
from provisioning.issuer import Issuer
from provisioning.keys import b64url_decode, b64url_encode, public_key_from_b64
from provisioning.tokens import sign_token

SITE = "elm-street"
NOW = 1_800_000_000
ISSUER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KID = "test-kid"
VERIFIER = BadgeVerifier({KID: ISSUER_KEY.public_key()}, site=SITE, leeway_s=60)


def badge(**overrides: object) -> str:
    args: dict[str, object] = {
        "kid": KID, "issuer": "coop", "member": "ada", "site": SITE, "now": NOW,
        "lifetime_s": 7 * 86400, "compartments": ("A1",), "groups": ("hand-tools",),
        "skills": ("battery-handling",),
    }
    args.update(overrides)
    return issue_badge(ISSUER_KEY, **args)  # type: ignore[arg-type]  # test helper


def rejected(token: str, now: float = NOW) -> TokenFault:
    with pytest.raises(TokenRejected) as caught:
        VERIFIER.verify(token, now=now)
    return caught.value.fault


def test_valid_badge_verifies_to_domain_names() -> None:
    verified = VERIFIER.verify(badge(), now=NOW + 10)
    assert verified.member == "ada"
    assert verified.site == SITE
    assert verified.compartments == ("A1",)
    assert verified.groups == ("hand-tools",)
    assert verified.skills == {"battery-handling": 1}
    assert verified.expires_at == NOW + 7 * 86400


def test_header_is_pinned_eddsa_with_kid_and_typ() -> None:
    assert jwt.get_unverified_header(badge()) == {"alg": "EdDSA", "kid": KID, "typ": BADGE_TYP}


def test_badge_signed_by_an_issuer_directory_verifies(issuer: Issuer) -> None:
    token = issue_badge(issuer.key, kid=issuer.kid, issuer=issuer.name, member="bo", site=SITE,
                        now=int(time.time()), lifetime_s=3600, compartments=("A1",))
    verifier = BadgeVerifier({issuer.kid: public_key_from_b64(issuer.public_key)}, site=SITE)
    assert verifier.verify(token, now=time.time()).member == "bo"


def test_expired_badge_is_refused_after_leeway() -> None:
    token = badge(lifetime_s=3600)
    assert VERIFIER.verify(token, now=NOW + 3600 + 59).member == "ada"
    assert rejected(token, now=NOW + 3600 + 60) is TokenFault.EXPIRED


def test_badge_before_nbf_is_refused() -> None:
    token = badge(not_before=NOW + 3600)
    assert rejected(token, now=NOW) is TokenFault.NOT_YET_VALID


def test_other_site_is_refused() -> None:
    assert rejected(badge(site="oak-lane")) is TokenFault.WRONG_AUDIENCE


def test_unknown_kid_is_refused() -> None:
    assert rejected(badge(kid="someone-else")) is TokenFault.UNKNOWN_KEY


def test_forged_signature_with_trusted_kid_is_refused() -> None:
    forged = issue_badge(Ed25519PrivateKey.generate(), kid=KID, issuer="coop", member="eve",
                         site=SITE, now=NOW, lifetime_s=3600, compartments=("A1",))
    assert rejected(forged) is TokenFault.BAD_SIGNATURE


def test_other_token_types_are_refused() -> None:
    claims = {"iss": "coop", "sub": "ada", "aud": SITE, "iat": NOW, "nbf": NOW,
              "exp": NOW + 60, "jti": "x"}
    command = sign_token(claims, ISSUER_KEY, kid=KID, typ="curbside-command+jwt")
    assert rejected(command) is TokenFault.WRONG_TYPE


def test_hmac_and_none_algorithms_are_refused() -> None:
    claims = {"iss": "coop", "sub": "ada", "aud": SITE, "iat": NOW, "nbf": NOW,
              "exp": NOW + 60, "jti": "x"}
    hs = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"kid": KID, "typ": BADGE_TYP})
    assert rejected(hs) is TokenFault.BAD_ALGORITHM
    header = b64url_encode(json.dumps({"alg": "none", "kid": KID, "typ": BADGE_TYP}).encode())
    body = b64url_encode(json.dumps(claims).encode())
    assert rejected(f"{header}.{body}.") is TokenFault.MALFORMED  # unsigned: no signature part
    assert rejected(f"{header}.{body}.AAAA") is TokenFault.BAD_ALGORITHM


def test_missing_expiry_is_refused() -> None:
    claims = {"iss": "coop", "sub": "ada", "aud": SITE, "iat": NOW, "nbf": NOW, "jti": "x"}
    token = sign_token(claims, ISSUER_KEY, kid=KID, typ=BADGE_TYP)
    assert rejected(token) is TokenFault.MISSING_CLAIM


def test_wrongly_typed_claims_are_refused() -> None:
    claims = {"iss": "coop", "sub": "ada", "aud": SITE, "iat": NOW, "nbf": NOW,
              "exp": NOW + 60, "jti": "x", "cpt": "A1"}
    token = sign_token(claims, ISSUER_KEY, kid=KID, typ=BADGE_TYP)
    assert rejected(token) is TokenFault.BAD_CLAIMS


def test_lifetime_is_bounded_at_issue() -> None:
    with pytest.raises(ValueError, match="lifetime_s"):
        badge(lifetime_s=MAX_LIFETIME_S + 1)


def test_non_canonical_base64_in_signature_is_refused() -> None:
    token = badge()
    head, body, sig = token.split(".")
    last = sig[-1]
    # 64 signature bytes leave 4 unused bits in the last character; setting one of them
    # decodes to the same bytes in a lenient decoder. It must not verify.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) | 1] if alphabet.index(last) % 2 == 0 else \
        alphabet[alphabet.index(last) & ~1]
    assert base64.urlsafe_b64decode(sig + "==") == base64.urlsafe_b64decode(sig[:-1] + twin + "==")
    assert rejected(f"{head}.{body}.{sig[:-1]}{twin}") is TokenFault.MALFORMED


VALID = badge()


@settings(max_examples=400)
@given(position=st.integers(0, len(VALID) - 1), replacement=st.characters(codec="ascii"))
def test_no_single_character_mutation_verifies(position: int, replacement: str) -> None:
    mutated = VALID[:position] + replacement + VALID[position + 1:]
    if mutated == VALID:
        return
    with pytest.raises(TokenRejected):
        VERIFIER.verify(mutated, now=NOW)


@settings(max_examples=200)
@given(data=st.data())
def test_no_mutation_of_decoded_parts_verifies(data: st.DataObject) -> None:
    parts = [bytearray(b64url_decode(p)) for p in VALID.split(".")]
    index = data.draw(st.integers(0, 2), label="part")
    position = data.draw(st.integers(0, len(parts[index]) - 1), label="byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    parts[index][position] ^= flip
    mutated = ".".join(b64url_encode(bytes(p)) for p in parts)
    with pytest.raises(TokenRejected):
        VERIFIER.verify(mutated, now=NOW)


@given(st.text(max_size=3000))
def test_arbitrary_text_is_refused_cleanly(text: str) -> None:
    with pytest.raises(TokenRejected):
        VERIFIER.verify(text, now=NOW)


@given(st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=80))
def test_arbitrary_well_formed_jws_shapes_are_refused_cleanly(h: bytes, b: bytes, s: bytes) -> None:
    token = ".".join(b64url_encode(x) for x in (h, b, s))
    with pytest.raises(TokenRejected):
        VERIFIER.verify(token, now=NOW)


def test_a_typical_badge_fits_a_qr_code_or_an_ntag215_tag() -> None:
    # The design budget is 400 bytes for a typical badge (a group and a skill badge); an
    # NTAG215 tag holds 504 bytes of NDEF, so richer badges (a weekly window, a use
    # limit, several skills) must stay below ~480.
    def make(skills: dict[str, int], groups: tuple[str, ...], **extra: object) -> int:
        token = issue_badge(ISSUER_KEY, kid="Xb3kPq9LmZ0", issuer="elm-street-coop",
                            member="m-004217", site="elm-street", now=NOW,
                            lifetime_s=7 * 86400, groups=groups, skills=skills,
                            **extra)  # type: ignore[arg-type]  # test helper
        return len(token.encode("ascii"))

    assert make({"battery-handling": 2}, ("hand-tools",)) < 400
    assert make({"battery-handling": 2}, ("hand-tools",), windows=("12345 08:00-20:00",),
                use_limit=1) < 440
    assert make({"battery-handling": 2, "ladder-safety": 1, "bike-repair": 3},
                ("hand-tools", "batteries")) < 480
