"""Trust: key validity windows, signed trust bundles, and the device's trust store."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import IssuerKey, TrustConfig
from edge.signed_store import Update
from edge.trust import BROKER_CA_FILE, TrustStore
from provisioning.badges import BadgeVerifier, issue_badge
from provisioning.errors import TokenFault, TokenRejected
from provisioning.keys import public_key_b64
from provisioning.pki import issue, make_ca
from provisioning.tokens import TrustedKey, sign_token
from provisioning.trust import TRUST_TYP, TrustBundleVerifier, issue_trust_bundle

NOW = 1_800_000_000
ROOT = Ed25519PrivateKey.from_private_bytes(bytes(range(5, 37)))
OLD = Ed25519PrivateKey.from_private_bytes(bytes(range(6, 38)))
NEW = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))


def grant(kid: str, key: Ed25519PrivateKey, **window: int) -> dict[str, object]:
    return {"kid": kid, "key": public_key_b64(key.public_key()), **window}


def bundle(version: int, *keys: dict[str, object], root: Ed25519PrivateKey = ROOT,
           site: str = "elm-street") -> str:
    return issue_trust_bundle(root, kid="root-1", issuer="coop-root", site=site,
                              version=version, now=NOW, issuer_keys=list(keys),
                              command_keys=[grant("ops-1", NEW)])


def config(with_root: bool = True) -> TrustConfig:
    roots = (IssuerKey(kid="root-1", public_key=public_key_b64(ROOT.public_key())),)
    return TrustConfig(issuers=(IssuerKey(kid="old", public_key=public_key_b64(OLD.public_key())),),
                       root_keys=roots if with_root else ())


def badge(key: Ed25519PrivateKey, kid: str, issued: int = NOW) -> str:
    return issue_badge(key, kid=kid, issuer="coop", member="ada", site="elm-street",
                       now=issued, lifetime_s=86400, groups=("hand-tools",))


@pytest.mark.parametrize(("window", "at", "issued", "ok"), [
    ({}, NOW, NOW, True),
    ({"not_before": NOW - 10}, NOW, NOW, True),
    ({"not_after": NOW + 10}, NOW, NOW, True),
    ({"not_after": NOW - 3600}, NOW, NOW - 7200, False),  # retired: its badges stop
    ({"not_before": NOW + 3600}, NOW + 7200, NOW + 7200, True),
    ({"not_before": NOW + 3600}, NOW, NOW, False),  # not yet in service
    ({"not_before": NOW - 60}, NOW, NOW - 7200, False),  # claims to predate its key
    ({"not_after": NOW - 30}, NOW, NOW - 100, True),  # within the 60 s leeway
])
def test_key_windows_bound_use_and_signing_time(window: dict[str, int], at: int, issued: int,
                                                ok: bool) -> None:
    verifier = BadgeVerifier({"k": TrustedKey(OLD.public_key(), **window)}, site="elm-street",
                             leeway_s=60)
    token = badge(OLD, "k", issued)
    if ok:
        assert verifier.verify(token, now=at).member == "ada"
    else:
        with pytest.raises(TokenRejected) as caught:
            verifier.verify(token, now=at)
        assert caught.value.fault is TokenFault.KEY_NOT_VALID


def test_bundle_verifies_under_the_root_and_nothing_else() -> None:
    verifier = TrustBundleVerifier({"root-1": ROOT.public_key()}, site="elm-street")
    verified = verifier.verify(bundle(3, grant("new", NEW, nbf=NOW)))
    assert (verified.version, [k.kid for k in verified.issuer_keys]) == (3, ["new"])
    assert verified.issuer_ring()["new"].not_before == NOW
    with pytest.raises(TokenRejected) as forged:
        verifier.verify(bundle(4, grant("new", NEW), root=NEW))
    with pytest.raises(TokenRejected) as elsewhere:
        verifier.verify(bundle(4, grant("new", NEW), site="oak-lane"))
    assert (forged.value.fault, elsewhere.value.fault) == (TokenFault.BAD_SIGNATURE,
                                                           TokenFault.WRONG_AUDIENCE)


@pytest.mark.parametrize("keys", [[], [grant("a", NEW), grant("a", OLD)],
                                  [{"kid": "a", "key": "short"}]])
def test_a_bundle_a_device_would_refuse_is_refused_at_signing(
        keys: list[dict[str, object]]) -> None:
    with pytest.raises(ValueError, match="claim isk"):
        bundle(1, *keys)


def test_store_installs_newer_refuses_older_and_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "trust.jws"
    store = TrustStore(path, config(), site="elm-street")
    assert store.version == 0
    assert set(store.issuer_keys()) == {"old"}
    assert store.command_keys() == {}
    assert store.update(bundle(2, grant("new", NEW))).outcome is Update.APPLIED
    assert set(store.issuer_keys()) == {"new"}
    assert set(store.command_keys()) == {"ops-1"}
    assert store.update(bundle(2, grant("new", NEW))).outcome is Update.SAME
    assert store.update(bundle(1, grant("old", OLD))).outcome is Update.ROLLBACK
    assert store.update(bundle(5, grant("x", OLD), root=NEW)).outcome is Update.INVALID
    again = TrustStore(path, config(), site="elm-street")
    assert (again.version, set(again.issuer_keys())) == (2, {"new"})


def test_an_edited_bundle_file_falls_back_to_the_configured_keys(tmp_path: Path) -> None:
    path = tmp_path / "trust.jws"
    TrustStore(path, config(), site="elm-street").update(bundle(2, grant("new", NEW)))
    head, body, sig = path.read_text().strip().split(".")
    path.write_text(f"{head}.{body[:-3]}AAA.{sig}\n")
    store = TrustStore(path, config(), site="elm-street")
    assert (store.version, set(store.issuer_keys())) == (0, {"old"})


def test_without_root_keys_every_bundle_is_refused(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.jws", config(with_root=False), site="elm-street")
    result = store.update(bundle(2, grant("new", NEW)))
    assert result.outcome is Update.INVALID
    assert "root_keys" in result.detail


VALID = bundle(7, grant("new", NEW))
VERIFIER = TrustBundleVerifier({"root-1": ROOT.public_key()}, site="elm-street")


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, len(VALID) - 1), replacement=st.characters(codec="ascii"))
def test_no_single_character_mutation_of_a_bundle_verifies(position: int,
                                                           replacement: str) -> None:
    mutated = VALID[:position] + replacement + VALID[position + 1:]
    if mutated != VALID:
        try:
            verified = VERIFIER.verify(mutated)
        except TokenRejected:
            return
        # Only the unused low bits of the last base64url character can change harmlessly.
        assert verified == VERIFIER.verify(VALID)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_text_never_crashes_the_bundle_verifier(text: str) -> None:
    with pytest.raises(TokenRejected):
        VERIFIER.verify(text)


def test_a_non_canonical_key_is_refused_by_signer_and_device() -> None:
    good = public_key_b64(NEW.public_key())
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(good[-1])
    twisted = good[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[
        last ^ 1]  # same 32 bytes, non-zero padding bits: not canonical
    with pytest.raises(ValueError, match=r"claim isk\.0\.key"):
        bundle(1, {"kid": "x", "key": twisted})
    forged = sign_token({"iss": "r", "aud": "elm-street", "iat": NOW, "jti": "j", "ver": 1,
                         "isk": [{"kid": "x", "key": twisted}]}, ROOT, kid="root-1",
                        typ=TRUST_TYP)
    with pytest.raises(TokenRejected) as caught:
        VERIFIER.verify(forged)
    assert caught.value.fault is TokenFault.BAD_CLAIMS
    with pytest.raises(ValueError, match="canonical"):
        IssuerKey(kid="x", public_key=twisted)


def test_a_string_iat_is_refused_even_without_a_clock() -> None:
    forged = sign_token({"iss": "r", "aud": "elm-street", "iat": str(NOW), "jti": "j",
                         "ver": 1, "isk": [grant("x", NEW)]}, ROOT, kid="root-1", typ=TRUST_TYP)
    with pytest.raises(TokenRejected) as caught:
        VERIFIER.verify(forged)
    assert caught.value.fault is TokenFault.BAD_CLAIMS


def test_the_version_floor_outlives_a_lost_or_edited_bundle(tmp_path: Path) -> None:
    path = tmp_path / "trust.jws"
    TrustStore(path, config(), site="elm-street").update(bundle(5, grant("new", NEW)))
    path.write_text("garbage\n")
    store = TrustStore(path, config(), site="elm-street")
    assert store.version == 0
    assert store.problem is not None
    assert store.update(bundle(4, grant("old", OLD))).outcome is Update.ROLLBACK
    assert store.update(bundle(5, grant("new", NEW))).outcome is Update.APPLIED  # restored
    assert store.version == 5


def ca_pem(name: str) -> str:
    return make_ca(name).cert_pem().decode()


def test_a_bundle_with_broker_cas_rewrites_broker_ca_pem_and_an_older_one_does_not(
        tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.jws", config(), site="elm-street")
    old_ca, new_ca = ca_pem("Old CA"), ca_pem("New CA")
    signed = issue_trust_bundle(ROOT, kid="root-1", issuer="coop-root", site="elm-street",
                                version=2, now=NOW, issuer_keys=[grant("new", NEW)],
                                broker_cas=[old_ca, new_ca])
    assert store.update(signed).outcome is Update.APPLIED
    path = tmp_path / BROKER_CA_FILE
    assert [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(
        path.read_bytes())] == ["CN=Old CA", "CN=New CA"]
    older = issue_trust_bundle(ROOT, kid="root-1", issuer="coop-root", site="elm-street",
                               version=1, now=NOW, issuer_keys=[grant("new", NEW)],
                               broker_cas=[ca_pem("Rogue CA")])
    assert store.update(older).outcome is Update.ROLLBACK
    path.unlink()  # lost: the same bundle again restores it
    assert store.update(signed).outcome is Update.SAME
    assert "CN=New CA" in {c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(
        path.read_bytes())}


def test_a_bundle_without_broker_cas_leaves_broker_ca_pem_alone(tmp_path: Path) -> None:
    path = tmp_path / BROKER_CA_FILE
    path.write_text(ca_pem("Enrolment CA"))
    before = path.read_text()
    store = TrustStore(tmp_path / "trust.jws", config(), site="elm-street")
    assert store.update(bundle(2, grant("new", NEW))).outcome is Update.APPLIED
    assert path.read_text() == before


@pytest.mark.parametrize("pem", ["not a certificate", "leaf"])
def test_a_broker_ca_that_is_not_a_ca_certificate_is_refused_at_signing(pem: str) -> None:
    if pem == "leaf":
        pem = issue(make_ca("CA"), "lockers-1").cert_pem().decode()
    with pytest.raises(ValueError, match=r"cas\[0\]"):
        issue_trust_bundle(ROOT, kid="root-1", issuer="coop-root", site="elm-street",
                           version=2, now=NOW, issuer_keys=[grant("new", NEW)], broker_cas=[pem])
