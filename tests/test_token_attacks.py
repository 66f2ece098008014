"""Forged tokens: algorithm confusion, injected keys, odd headers, and fuzzing.

Every forgery is refused with :class:`TokenRejected` and the exact :class:`TokenFault` the
verifier gives for it; random input never makes a verifier raise anything else. Tokens are
built by hand (base64url of JSON, signed with Ed25519 or HMAC directly) so the forger is not
limited by what PyJWT's encoder is willing to produce.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import socket
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioning.badges import BADGE_TYP, Badge, BadgeVerifier, issue_badge
from provisioning.commands import COMMAND_TYP, Command, CommandVerifier, issue_command
from provisioning.denylist import (
    DENYLIST_TYP,
    Denylist,
    DenylistVerifier,
    Revocation,
    issue_denylist,
)
from provisioning.errors import TokenFault, TokenRejected
from provisioning.keys import b64url_decode, b64url_encode, public_key_b64, thumbprint_kid

SITE = "elm-street"
DEVICE = "locker-7"
NOW = 1_800_000_000
ISSUER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
ISSUER_KID = "issuer-2026"
COMMAND_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
COMMAND_KID = "platform-1"
ATTACKER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(96, 128)))
ATTACKER_KID = thumbprint_kid(ATTACKER_KEY.public_key())

BADGES = BadgeVerifier({ISSUER_KID: ISSUER_KEY.public_key()}, site=SITE)
COMMANDS = CommandVerifier({COMMAND_KID: COMMAND_KEY.public_key()}, device=DEVICE)
DENYLISTS = DenylistVerifier({ISSUER_KID: ISSUER_KEY.public_key()}, site=SITE)

ABSENT = object()  # a header member value meaning "leave the member out"
Check = Callable[[str], object]


def check_badge(token: str) -> Badge:
    return BADGES.verify(token, now=NOW + 10)


def check_command(token: str) -> Command:
    return COMMANDS.verify(token, now=NOW + 10)


def check_denylist(token: str) -> Denylist:
    return DENYLISTS.verify(token)


@dataclass(frozen=True)
class Target:
    """One token type: its verifier, its typ, its trusted kid and key, and valid claims."""

    name: str
    check: Check
    typ: str
    kid: str
    key: Ed25519PrivateKey
    claims: Mapping[str, object]

    def header(self, **members: object) -> dict[str, object]:
        """The genuine header ``{alg, kid, typ}`` with ``members`` added or replaced."""
        merged: dict[str, object] = {"alg": "EdDSA", "kid": self.kid, "typ": self.typ, **members}
        return {name: value for name, value in merged.items() if value is not ABSENT}


BADGE = Target("badge", check_badge, BADGE_TYP, ISSUER_KID, ISSUER_KEY,
               {"iss": "coop", "sub": "eve", "aud": SITE, "iat": NOW, "exp": NOW + 3600,
                "jti": "forged-1", "cpt": ["A1"], "grp": ["hand-tools"]})
COMMAND = Target("command", check_command, COMMAND_TYP, COMMAND_KID, COMMAND_KEY,
                 {"iss": "ops", "aud": DEVICE, "iat": NOW, "exp": NOW + 60,
                  "jti": "nonce-0123456789", "cmd": "open", "args": {"compartment": "A1"}})
DENYLIST = Target("denylist", check_denylist, DENYLIST_TYP, ISSUER_KID, ISSUER_KEY,
                  {"iss": "coop", "aud": SITE, "iat": NOW, "jti": "dl-1", "ver": 7, "ent": []})
TARGETS = [pytest.param(t, id=t.name) for t in (BADGE, COMMAND, DENYLIST)]


def part(value: object) -> str:
    """One base64url segment: raw ``bytes`` as they are, anything else as compact JSON."""
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return b64url_encode(raw)


def signed(header: object, payload: object, key: Ed25519PrivateKey) -> str:
    """A compact JWS whose Ed25519 signature is genuine for exactly these bytes."""
    signing_input = f"{part(header)}.{part(payload)}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"


def with_signature(header: object, payload: object, signature: str) -> str:
    return f"{part(header)}.{part(payload)}.{signature}"


def fault(check: Check, token: str) -> TokenFault:
    with pytest.raises(TokenRejected) as caught:
        check(token)
    return caught.value.fault


def result_or_fault(check: Check, token: str) -> object:
    """What ``check(token)`` returns, or the fault it is refused with."""
    try:
        return check(token)
    except TokenRejected as exc:
        return exc.fault


def valid_badge() -> str:
    return issue_badge(ISSUER_KEY, kid=ISSUER_KID, issuer="coop", member="ada", site=SITE,
                       now=NOW, lifetime_s=3600, compartments=("A1",), groups=("hand-tools",))


def copied_signature() -> str:
    return valid_badge().split(".")[2]


@pytest.mark.parametrize("target", TARGETS)
def test_hand_built_genuine_tokens_verify(target: Target) -> None:
    # The control: the forging helpers make tokens that verify when nothing is wrong, so
    # each refusal below is caused by the attack and not by the helpers.
    assert target.check(signed(target.header(), target.claims, target.key)) is not None


# --- 1. alg: none and look-alikes ---------------------------------------------------------

NOT_EDDSA = ["none", "NONE", "None", "nOnE", "EdDSA ", " EdDSA", "eddsa", "EDDSA", "Ed25519",
             "ES256", "RS256", "PS256", "HS256", "", None, ["EdDSA"], {"alg": "EdDSA"}, ABSENT]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("alg", NOT_EDDSA)
def test_unsigned_token_with_empty_signature_is_malformed(target: Target, alg: object) -> None:
    token = with_signature(target.header(alg=alg), target.claims, "")
    assert fault(target.check, token) is TokenFault.MALFORMED  # an empty part is not base64url


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("alg", NOT_EDDSA)
def test_other_alg_with_copied_valid_signature_is_bad_algorithm(target: Target,
                                                                alg: object) -> None:
    token = with_signature(target.header(alg=alg), target.claims, copied_signature())
    assert fault(target.check, token) is TokenFault.BAD_ALGORITHM


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("alg", ["none", "NONE", "None", "EdDSA "])
def test_alg_none_signed_by_the_trusted_key_is_still_bad_algorithm(target: Target,
                                                                   alg: str) -> None:
    # Even a signature that is genuine for these bytes cannot make a non-EdDSA alg acceptable.
    token = signed(target.header(alg=alg), target.claims, target.key)
    assert fault(target.check, token) is TokenFault.BAD_ALGORITHM


# --- 2. HMAC keyed with the public key (the RS/HS confusion) ------------------------------

def public_key_secrets(key: Ed25519PrivateKey) -> dict[str, bytes]:
    public = key.public_key()
    return {
        "raw": public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "pem": public.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo),
        "der": public.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo),
        "b64url": public_key_b64(public).encode("ascii"),
        "openssh": public.public_bytes(serialization.Encoding.OpenSSH,
                                       serialization.PublicFormat.OpenSSH),
    }


HMACS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def hmac_signed(header: object, payload: object, secret: bytes, alg: str) -> str:
    signing_input = f"{part(header)}.{part(payload)}"
    mac = hmac.new(secret, signing_input.encode("ascii"), HMACS[alg]).digest()
    return f"{signing_input}.{b64url_encode(mac)}"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("alg", sorted(HMACS))
@pytest.mark.parametrize("form", ["raw", "pem", "der", "b64url", "openssh"])
def test_hmac_keyed_with_the_public_key_is_bad_algorithm(target: Target, alg: str,
                                                         form: str) -> None:
    secret = public_key_secrets(target.key)[form]
    token = hmac_signed(target.header(alg=alg), target.claims, secret, alg)
    assert fault(target.check, token) is TokenFault.BAD_ALGORITHM


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("alg", sorted(HMACS))
@pytest.mark.parametrize("form", ["raw", "pem", "b64url"])
def test_hmac_tag_under_an_eddsa_header_is_bad_signature(target: Target, alg: str,
                                                         form: str) -> None:
    # Claiming alg EdDSA but computing an HMAC tag (HS512's is 64 bytes, like Ed25519's).
    secret = public_key_secrets(target.key)[form]
    token = hmac_signed(target.header(), target.claims, secret, alg)
    assert fault(target.check, token) is TokenFault.BAD_SIGNATURE


# --- 3. Keys carried by the token ---------------------------------------------------------

def attacker_jwk() -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": public_key_b64(ATTACKER_KEY.public_key()),
            "kid": ATTACKER_KID}


def attacker_certificate_b64() -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coop issuer")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(ATTACKER_KEY.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=9999))
            .sign(ATTACKER_KEY, algorithm=None))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if verifying a token tries to fetch a key (jku, x5u)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a verifier tried to reach the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


KEY_HEADERS: list[tuple[str, Callable[[], dict[str, object]]]] = [
    ("jwk", lambda: {"jwk": attacker_jwk()}),
    ("jku", lambda: {"jku": "http://127.0.0.1:9/keys.json"}),
    ("x5u", lambda: {"x5u": "http://127.0.0.1:9/cert.pem"}),
    ("x5c", lambda: {"x5c": [attacker_certificate_b64()]}),
    ("all", lambda: {"jwk": attacker_jwk(), "jku": "http://127.0.0.1:9/k",
                     "x5c": [attacker_certificate_b64()]}),
]


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("kid", "expected"), [
    (ABSENT, TokenFault.MALFORMED),  # no kid: the embedded key is not a fallback
    ("trusted", TokenFault.BAD_SIGNATURE),  # trusted kid: the pinned key is used, not theirs
    (ATTACKER_KID, TokenFault.UNKNOWN_KEY),  # their own kid: not trusted
])
@pytest.mark.parametrize(("carrier", "members"), KEY_HEADERS, ids=[k for k, _ in KEY_HEADERS])
def test_key_carried_in_the_header_is_never_used(
    target: Target, kid: object, expected: TokenFault, carrier: str,
    members: Callable[[], dict[str, object]],
) -> None:
    header = target.header(**members(), kid=target.kid if kid == "trusted" else kid)
    token = signed(header, target.claims, ATTACKER_KEY)
    assert len(token) <= 2048  # refused for its header, not for its length
    assert fault(target.check, token) is expected, carrier


@pytest.mark.parametrize("target", TARGETS)
def test_attacker_key_with_the_trusted_kid_is_bad_signature(target: Target) -> None:
    assert fault(target.check, signed(target.header(), target.claims, ATTACKER_KEY)) \
        is TokenFault.BAD_SIGNATURE


# --- 4. Odd kids ---------------------------------------------------------------------------

CYRILLIC = str.maketrans("aeiop", "\u0430\u0435\u0456\u043e\u0440")  # look the same
ODD_KIDS: list[tuple[str, Callable[[str], object], TokenFault]] = [
    ("missing", lambda k: ABSENT, TokenFault.MALFORMED),
    ("null", lambda k: None, TokenFault.MALFORMED),
    ("integer", lambda k: 1, TokenFault.MALFORMED),
    ("boolean", lambda k: True, TokenFault.MALFORMED),
    ("list", lambda k: [k], TokenFault.MALFORMED),
    ("object", lambda k: {"kid": k}, TokenFault.MALFORMED),
    ("empty", lambda k: "", TokenFault.UNKNOWN_KEY),
    ("traversal", lambda k: "../../etc/passwd", TokenFault.UNKNOWN_KEY),
    ("traversal-suffix", lambda k: f"{k}/../{k}", TokenFault.UNKNOWN_KEY),
    ("nul-suffix", lambda k: f"{k}\x00", TokenFault.UNKNOWN_KEY),
    ("nul-prefix", lambda k: f"\x00{k}", TokenFault.UNKNOWN_KEY),
    ("cyrillic-lookalikes", lambda k: k.translate(CYRILLIC), TokenFault.UNKNOWN_KEY),
    ("fullwidth", lambda k: "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in k),
     TokenFault.UNKNOWN_KEY),
    ("zero-width", lambda k: f"{k[:2]}\u200b{k[2:]}", TokenFault.UNKNOWN_KEY),
    ("upper", lambda k: k.upper(), TokenFault.UNKNOWN_KEY),
    ("title", lambda k: k.title(), TokenFault.UNKNOWN_KEY),
    ("trailing-space", lambda k: f"{k} ", TokenFault.UNKNOWN_KEY),
    ("leading-space", lambda k: f" {k}", TokenFault.UNKNOWN_KEY),
    ("trailing-newline", lambda k: f"{k}\n", TokenFault.UNKNOWN_KEY),
    ("trailing-tab", lambda k: f"{k}\t", TokenFault.UNKNOWN_KEY),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("signer", ["trusted", "attacker"])
@pytest.mark.parametrize(("name", "make_kid", "expected"), ODD_KIDS,
                         ids=[n for n, _, _ in ODD_KIDS])
def test_odd_kid_is_never_verified(target: Target, signer: str, name: str,
                                   make_kid: Callable[[str], object],
                                   expected: TokenFault) -> None:
    # Signed by the trusted key too: a near-miss kid must not fall back to trying every key.
    key = target.key if signer == "trusted" else ATTACKER_KEY
    kid = make_kid(target.kid)
    assert kid != target.kid
    token = signed(target.header(kid=kid), target.claims, key)
    assert fault(target.check, token) is expected, name


@pytest.mark.parametrize(("target", "expected"), [
    pytest.param(BADGE, TokenFault.MALFORMED, id="badge"),  # over the 2048-character bound
    pytest.param(COMMAND, TokenFault.MALFORMED, id="command"),
    pytest.param(DENYLIST, TokenFault.UNKNOWN_KEY, id="denylist"),  # bound is 2 MiB
])
def test_ten_kilobyte_kid_is_never_verified(target: Target, expected: TokenFault) -> None:
    token = signed(target.header(kid=target.kid + "x" * 10_240), target.claims, target.key)
    assert fault(target.check, token) is expected


# --- 5. Header and shape oddities ----------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("crit", [["exp"], ["b64"], [], "b64", None, ["kid"]])
def test_crit_header_is_malformed_even_when_genuinely_signed(target: Target,
                                                             crit: object) -> None:
    token = signed(target.header(crit=crit), target.claims, target.key)
    assert fault(target.check, token) is TokenFault.MALFORMED


@pytest.mark.parametrize("target", TARGETS)
def test_unencoded_payload_b64_false_is_malformed(target: Target) -> None:
    header = part(target.header(b64=False))
    raw = json.dumps(target.claims).encode()
    # RFC 7797 form, genuinely signed over "header.<raw payload>", payload detached.
    detached = f"{header}..{b64url_encode(target.key.sign(header.encode() + b'.' + raw))}"
    assert fault(target.check, detached) is TokenFault.MALFORMED
    # b64=false declared but a normal encoded payload, genuinely signed the normal way.
    attached = signed(target.header(b64=False), target.claims, target.key)
    assert fault(target.check, attached) is TokenFault.MALFORMED


def raw_header(target: Target, members: str) -> bytes:
    return ("{" + members.format(kid=json.dumps(target.kid), typ=json.dumps(target.typ)) + "}"
            ).encode()


NONE_THEN_EDDSA = '"alg":"none","alg":"EdDSA","kid":{kid},"typ":{typ}'


@pytest.mark.parametrize("target", TARGETS)
def test_duplicate_alg_members_need_a_genuine_signature(target: Target) -> None:
    # The verifier's own header check and PyJWT both parse the header with json.loads, where
    # the last of duplicate members wins, so they agree that this header says alg EdDSA; and
    # the signature covers the header's exact bytes. An attacker can therefore neither use
    # the leading "none" nor reorder the members without a signature over the new bytes.
    header = raw_header(target, NONE_THEN_EDDSA)
    assert fault(target.check, with_signature(header, target.claims, "")) is TokenFault.MALFORMED
    assert fault(target.check, with_signature(header, target.claims, copied_signature())) \
        is TokenFault.BAD_SIGNATURE
    assert fault(target.check, signed(header, target.claims, ATTACKER_KEY)) \
        is TokenFault.BAD_SIGNATURE
    eddsa_then_none = raw_header(target, '"alg":"EdDSA","alg":"none","kid":{kid},"typ":{typ}')
    assert fault(target.check, signed(eddsa_then_none, target.claims, target.key)) \
        is TokenFault.BAD_ALGORITHM
    # Only the trusted key's genuine signature over these very bytes may pass: refusing
    # duplicate members (malformed) would be fine too, but nothing else.
    outcome = result_or_fault(target.check, signed(header, target.claims, target.key))
    expected = target.check(signed(target.header(), target.claims, target.key))
    assert outcome is TokenFault.MALFORMED or outcome == expected


@pytest.mark.parametrize("target", TARGETS)
def test_duplicate_kid_members_resolve_like_the_signature_check(target: Target) -> None:
    trusted_last = raw_header(target, f'"alg":"EdDSA","kid":"{ATTACKER_KID}","kid":{{kid}},'
                                      '"typ":{typ}')
    assert fault(target.check, signed(trusted_last, target.claims, ATTACKER_KEY)) \
        is TokenFault.BAD_SIGNATURE
    attacker_last = raw_header(target, f'"alg":"EdDSA","kid":{{kid}},"kid":"{ATTACKER_KID}",'
                                       '"typ":{typ}')
    assert fault(target.check, signed(attacker_last, target.claims, ATTACKER_KEY)) \
        is TokenFault.UNKNOWN_KEY


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("header", [
    b'["EdDSA"]', b'"EdDSA"', b"42", b"null", b"true", b"", b"{", b"{}}", b"\xef\xbb\xbf",
    b'{"alg":"EdDSA","kid":"k\xe9"}',  # latin-1, not UTF-8
    b'{"alg":"EdDSA\xff","kid":"issuer-2026"}',
    b'\xff{"alg":"EdDSA"}',
], ids=repr)
def test_header_that_is_not_a_utf8_json_object_is_malformed(target: Target,
                                                            header: bytes) -> None:
    assert fault(target.check, signed(header, target.claims, target.key)) is TokenFault.MALFORMED


@pytest.mark.parametrize("target", TARGETS)
def test_utf16_header_is_malformed_even_when_genuine(target: Target) -> None:
    # RFC 7515 headers are UTF-8; json.loads(bytes) would guess UTF-16/32, so the verifier
    # decodes UTF-8 itself and refuses anything else, whoever signed it.
    header = json.dumps(target.header()).encode("utf-16")
    assert fault(target.check, signed(header, target.claims, target.key)) \
        is TokenFault.MALFORMED


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize("padding", ["=", "==", "canonical"])
def test_padded_segment_is_malformed(target: Target, index: int, padding: str) -> None:
    parts = signed(target.header(), target.claims, target.key).split(".")
    parts[index] += "=" * (-len(parts[index]) % 4 or 4) if padding == "canonical" else padding
    assert fault(target.check, ".".join(parts)) is TokenFault.MALFORMED


RESHAPES: list[tuple[str, Callable[[str], str]]] = [
    ("leading-space", lambda t: f" {t}"),
    ("trailing-newline", lambda t: f"{t}\n"),
    ("trailing-crlf", lambda t: f"{t}\r\n"),
    ("leading-tab", lambda t: f"\t{t}"),
    ("leading-bom", lambda t: f"\ufeff{t}"),
    ("trailing-nul", lambda t: f"{t}\x00"),
    ("spaced-dots", lambda t: t.replace(".", " . ")),
    ("newline-after-dots", lambda t: t.replace(".", ".\n")),
    ("wrapped-line", lambda t: f"{t[:10]}\r\n{t[10:]}"),
    ("four-segments-empty", lambda t: f"{t}."),
    ("four-segments", lambda t: f"{t}.{t.split('.')[2]}"),
    ("two-segments", lambda t: t.rsplit(".", 1)[0]),
    ("one-segment", lambda t: t.split(".")[0]),
    ("empty-payload", lambda t: f"{t.split('.')[0]}..{t.split('.')[2]}"),
    ("empty", lambda t: ""),
    ("dots", lambda t: ".."),
    ("more-dots", lambda t: "..."),
    ("json-serialization", lambda t: json.dumps(dict(zip(("protected", "payload", "signature"),
                                                         t.split("."), strict=True)))),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("name", "reshape"), RESHAPES, ids=[n for n, _ in RESHAPES])
def test_reshaped_token_is_malformed(target: Target, name: str,
                                     reshape: Callable[[str], str]) -> None:
    token = signed(target.header(), target.claims, target.key)
    assert fault(target.check, reshape(token)) is TokenFault.MALFORMED, name


@pytest.mark.parametrize(("target", "pad"), [
    pytest.param(BADGE, 2048, id="badge"),
    pytest.param(COMMAND, 2048, id="command"),
    pytest.param(DENYLIST, 2 * 1024 * 1024, id="denylist"),
])
def test_over_long_token_is_malformed_even_when_genuine(target: Target, pad: int) -> None:
    token = signed(target.header(), {**target.claims, "pad": "x" * pad}, target.key)
    assert fault(target.check, token) is TokenFault.MALFORMED


# A deeply nested header makes json.loads raise RecursionError; it must come out as
# malformed, not escape verify(). A 1,400-deep header fits the 2048-character badge bound
# (CPython's recursion limit is 1000); the 2 MiB denylist bound allows any depth.
@pytest.mark.parametrize(("target", "depth"), [
    pytest.param(BADGE, 1_400, id="badge"),
    pytest.param(COMMAND, 1_400, id="command"),
    pytest.param(DENYLIST, 100_000, id="denylist"),
])
def test_deeply_nested_header_is_malformed(target: Target, depth: int) -> None:
    token = with_signature(b"[" * depth, b"{}", copied_signature())
    assert len(token) <= (2048 if target is not DENYLIST else 2 * 1024 * 1024)  # not too long
    assert fault(target.check, token) is TokenFault.MALFORMED


# --- 6. Token-type confusion ---------------------------------------------------------------

@pytest.mark.parametrize("typ", [COMMAND_TYP, DENYLIST_TYP, "JWT", "jwt", "curbside-badge",
                                 "CURBSIDE-BADGE+JWT", f"{BADGE_TYP} ",
                                 f"application/{BADGE_TYP}", "", None, [BADGE_TYP], ABSENT])
def test_badge_re_signed_with_another_typ_is_wrong_type(typ: object) -> None:
    head, body, _ = valid_badge().split(".")
    header = json.loads(b64url_decode(head))
    assert header == BADGE.header()  # the issuer's header, then only typ is changed
    header = BADGE.header(typ=typ)
    signing_input = f"{part(header)}.{body}"  # the claims' exact bytes are kept
    token = f"{signing_input}.{b64url_encode(ISSUER_KEY.sign(signing_input.encode()))}"
    assert fault(check_badge, token) is TokenFault.WRONG_TYPE


def test_tokens_of_one_type_are_refused_as_another() -> None:
    # Issuers sign badges and denylists with the same key: typ, inside the signed header,
    # is all that keeps one from being read as the other.
    command = issue_command(COMMAND_KEY, kid=COMMAND_KID, operator="ops", device=DEVICE,
                            name="open", now=NOW, args={"compartment": "A1"})
    denylist = issue_denylist(ISSUER_KEY, kid=ISSUER_KID, issuer="coop", site=SITE, version=3,
                              entries=[{"sub": "ada", "until": NOW + 86400}], now=NOW)
    badge = valid_badge()
    assert check_badge(badge).member == "ada"
    assert check_command(command).name == "open"
    assert check_denylist(denylist).version == 3
    assert fault(check_badge, command) is TokenFault.WRONG_TYPE
    assert fault(check_badge, denylist) is TokenFault.WRONG_TYPE
    assert fault(check_command, badge) is TokenFault.WRONG_TYPE
    assert fault(check_command, denylist) is TokenFault.WRONG_TYPE
    assert fault(check_denylist, badge) is TokenFault.WRONG_TYPE
    assert fault(check_denylist, command) is TokenFault.WRONG_TYPE


# --- 7. Properties -------------------------------------------------------------------------

CHECKS: tuple[Check, ...] = (check_badge, check_command, check_denylist)


def verified_or_none(check: Check, token: str) -> object | None:
    """``check(token)``, or None when refused; any other exception fails the test."""
    try:
        return check(token)
    except TokenRejected:
        return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
HEADER_NAMES = ["alg", "kid", "typ", "crit", "b64", "jwk", "jku", "x5c", "cty", "zip"]
# Claim names from the models themselves, so claims added later are fuzzed too.
CLAIM_NAMES = sorted({field.alias or name for model in (Badge, Command, Denylist)
                      for name, field in model.model_fields.items()})
ENTRY_NAMES = sorted(Revocation.model_fields)
header_members = st.dictionaries(st.sampled_from(HEADER_NAMES) | st.text(max_size=8),
                                 json_values, max_size=4)
claim_members = st.dictionaries(st.sampled_from(CLAIM_NAMES) | st.text(max_size=8),
                                json_values | st.lists(st.dictionaries(
                                    st.sampled_from(ENTRY_NAMES),
                                    json_values, max_size=4), max_size=3),
                                max_size=5)
targets = st.sampled_from([BADGE, COMMAND, DENYLIST])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=3000))
def test_arbitrary_text_is_verified_or_refused_cleanly(text: str) -> None:
    for check in CHECKS:
        verified_or_none(check, text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_as_latin1_are_verified_or_refused_cleanly(data: bytes) -> None:
    for check in CHECKS:
        verified_or_none(check, data.decode("latin-1"))


@settings(max_examples=300, deadline=None)
@given(target=targets, plausible=st.booleans(), header=header_members, claims=claim_members,
       signature=st.binary(max_size=96) | st.just(b"copied"))
def test_jws_shaped_json_is_verified_or_refused_cleanly(
    target: Target, plausible: bool, header: dict[str, Any], claims: dict[str, Any],
    signature: bytes,
) -> None:
    # Half the headers start from the genuine one so that they get past the header checks.
    full_header = {**target.header(), **header} if plausible else header
    sig = copied_signature() if signature == b"copied" else b64url_encode(signature)
    token = with_signature(full_header, {**target.claims, **claims}, sig)
    for check in CHECKS:
        verified_or_none(check, token)


@settings(max_examples=300, deadline=None)
@given(target=targets, header=header_members, claims=claim_members)
def test_genuinely_signed_arbitrary_claims_are_verified_or_refused_cleanly(
    target: Target, header: dict[str, Any], claims: dict[str, Any],
) -> None:
    # Past the signature check: odd claim values reach the time checks and the models.
    for full_header in (target.header(), {**target.header(), **header}):
        token = signed(full_header, {**target.claims, **claims}, target.key)
        for check in CHECKS:
            verified_or_none(check, token)


VALID = valid_badge()
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
mutation_chars = st.sampled_from(f"{B64URL}.= \n") | st.characters()


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["substitute", "insert", "delete"]), data=st.data())
def test_no_single_character_mutation_of_a_badge_verifies_as_something_else(
    kind: str, data: st.DataObject,
) -> None:
    last = len(VALID) if kind == "insert" else len(VALID) - 1
    at = data.draw(st.integers(0, last), label="position")
    char = "" if kind == "delete" else data.draw(mutation_chars, label="char")
    mutated = VALID[:at] + char + VALID[at + (0 if kind == "insert" else 1):]
    if mutated == VALID:
        return
    try:
        verified = check_badge(mutated)
    except TokenRejected:
        return
    # Only a mutation that decodes to the very same bytes (a base64 padding-bit twin, which
    # the canonical decoder refuses anyway) could still verify, and to the same badge.
    assert [b64url_decode(p) for p in mutated.split(".")] == \
        [b64url_decode(p) for p in VALID.split(".")]
    assert verified == check_badge(VALID)
