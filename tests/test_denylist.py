"""Signed denylists: issue, verify, apply only newer versions, persist, revoke."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.denylist import DenylistStore, Update
from provisioning.badges import BadgeVerifier, issue_badge
from provisioning.denylist import DenylistVerifier, Revocation, issue_denylist
from provisioning.errors import TokenRejected

NOW = 1_800_000_000
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
KEYS = {"k1": KEY.public_key()}
VERIFIER = DenylistVerifier(KEYS, site="elm-street")


def denylist(version: int, *entries: dict[str, object], key: Ed25519PrivateKey = KEY,
             site: str = "elm-street") -> str:
    return issue_denylist(key, kid="k1", issuer="coop", site=site, version=version,
                          entries=list(entries), now=NOW)


def badge(member: str = "ada", badge_id: str = "b-1", issued_at: int = NOW):  # type: ignore[no-untyped-def]
    token = issue_badge(KEY, kid="k1", issuer="coop", member=member, site="elm-street",
                        now=issued_at, lifetime_s=86400, groups=("hand-tools",),
                        badge_id=badge_id)
    return BadgeVerifier(KEYS, site="elm-street").verify(token, now=issued_at)


def test_entries_revoke_by_badge_id_member_and_issued_before() -> None:
    by_id = Revocation(jti="b-1", until=NOW + 10)
    by_member = Revocation(sub="ada", until=NOW + 10)
    before = Revocation(sub="ada", before=NOW, until=NOW + 10)
    assert by_id.revokes(badge_id="b-1", member="bo", issued_at=NOW)
    assert not by_id.revokes(badge_id="b-2", member="ada", issued_at=NOW)
    assert by_member.revokes(badge_id="x", member="ada", issued_at=NOW)
    assert before.revokes(badge_id="x", member="ada", issued_at=NOW - 1)
    assert not before.revokes(badge_id="x", member="ada", issued_at=NOW)


@pytest.mark.parametrize("entry", [{"until": NOW}, {"jti": "a", "sub": "b", "until": NOW},
                                   {"jti": "a", "before": NOW, "until": NOW}])
def test_ambiguous_entries_are_refused_at_signing(entry: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"entry|before"):
        denylist(1, entry)


def test_store_applies_newer_ignores_same_refuses_older_and_forged(tmp_path: Path) -> None:
    store = DenylistStore(tmp_path / "denylist.jws", KEYS, site="elm-street")
    assert store.version == 0
    assert store.update(denylist(2, {"jti": "b-1", "until": NOW + 99})).outcome \
        is Update.APPLIED
    assert store.update(denylist(2)).outcome is Update.SAME
    rollback = store.update(denylist(1))
    assert rollback.outcome is Update.ROLLBACK
    assert store.update(denylist(9, key=Ed25519PrivateKey.generate())).outcome \
        is Update.INVALID
    assert store.update(denylist(9, site="oak-lane")).outcome is Update.INVALID
    assert store.version == 2
    assert store.revokes(badge(badge_id="b-1"), now=NOW)


def test_store_survives_a_restart_and_refuses_an_edited_file(tmp_path: Path) -> None:
    path = tmp_path / "denylist.jws"
    first = DenylistStore(path, KEYS, site="elm-street")
    first.update(denylist(3, {"sub": "ada", "until": NOW + 99}))
    assert DenylistStore(path, KEYS, site="elm-street").revokes(badge(), now=NOW)
    head, body, sig = path.read_text().strip().split(".")
    flipped = "B" if body[10] != "B" else "C"  # an edited claim, whatever the signature
    path.write_text(f"{head}.{body[:10]}{flipped}{body[11:]}.{sig}\n")
    assert DenylistStore(path, KEYS, site="elm-street").version == 0


def test_lapsed_entries_no_longer_revoke(tmp_path: Path) -> None:
    store = DenylistStore(tmp_path / "d.jws", KEYS, site="elm-street")
    store.update(denylist(1, {"sub": "ada", "until": NOW + 60}))
    assert store.revokes(badge(), now=NOW + 59)
    assert not store.revokes(badge(), now=NOW + 61)


VALID = denylist(5, {"jti": "b-1", "until": NOW + 99})


@settings(max_examples=200)
@given(position=st.integers(0, len(VALID) - 1), replacement=st.characters(codec="ascii"))
def test_no_single_character_mutation_of_a_denylist_verifies(position: int,
                                                             replacement: str) -> None:
    mutated = VALID[:position] + replacement + VALID[position + 1:]
    if mutated != VALID:
        with pytest.raises(TokenRejected):
            VERIFIER.verify(mutated)


def test_a_list_signed_by_a_key_rotated_out_is_still_honoured_after_restart(
        tmp_path: Path) -> None:
    """Revocations fail closed: dropping the signing key must not drop the list."""
    path = tmp_path / "denylist.jws"
    ring: dict[str, Ed25519PublicKey] = dict(KEYS)
    store = DenylistStore(path, lambda: ring, site="elm-street")
    store.update(denylist(5, {"sub": "ada", "until": NOW + 99}))
    ring = {"k2": Ed25519PrivateKey.generate().public_key()}  # a trust bundle rotated k1 out
    again = DenylistStore(path, lambda: ring, site="elm-street")
    assert again.version == 5
    assert again.revokes(badge(), now=NOW)
    assert again.update(denylist(4)).outcome is Update.INVALID  # k1 no longer signs new ones


def test_older_versions_stay_refused_when_the_stored_list_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "denylist.jws"
    DenylistStore(path, KEYS, site="elm-street").update(denylist(5))
    path.unlink()
    store = DenylistStore(path, KEYS, site="elm-street")
    assert store.version == 0
    assert store.update(denylist(3)).outcome is Update.ROLLBACK
    assert store.update(denylist(5)).outcome is Update.APPLIED
