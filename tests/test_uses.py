"""The use ledger: limited badges are counted durably, and expired rows are dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.uses import KEEP_AFTER_EXPIRY_S, UseLedger
from provisioning.badges import Badge, BadgeVerifier, issue_badge

NOW = 1_800_000_000
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(9, 41)))


def badge(badge_id: str, uses: int | None, issuer: str = "coop") -> Badge:
    token = issue_badge(KEY, kid="k", issuer=issuer, member="ada", site="s", now=NOW,
                        lifetime_s=3600, groups=("g",), badge_id=badge_id, use_limit=uses)
    return BadgeVerifier({"k": KEY.public_key()}, site="s").verify(token, now=NOW)


def test_limit_counts_per_badge_and_survives_reopening(tmp_path: Path) -> None:
    ledger = UseLedger(tmp_path / "uses.db")
    three = badge("three", 3)
    assert [ledger.consume_now(three, now=NOW) for _ in range(4)] == [True, True, True, False]
    single = badge("single", 1)
    assert ledger.consume_now(single, now=NOW)
    same_id_other_issuer = badge("single", 1, issuer="other-coop")
    assert ledger.consume_now(same_id_other_issuer, now=NOW)
    ledger.close()
    reopened = UseLedger(tmp_path / "uses.db")
    assert (reopened.used(three), reopened.used(single)) == (3, 1)
    assert not reopened.consume_now(single, now=NOW)
    reopened.close()


def test_unlimited_badges_are_not_written(tmp_path: Path) -> None:
    ledger = UseLedger(tmp_path / "uses.db")
    free = badge("free", None)
    assert all(ledger.consume_now(free, now=NOW) for _ in range(3))
    assert asyncio.run(ledger.consume(free, now=NOW))
    assert ledger.used(free) == 0
    ledger.close()


def test_rows_are_dropped_only_long_after_their_badge_expired(tmp_path: Path) -> None:
    ledger = UseLedger(tmp_path / "uses.db")
    old = badge("old", 1)
    ledger.consume_now(old, now=NOW)
    # A clock leapt forward by days (still graded "floor") must not forget the use.
    ledger.consume_now(badge("later", 2), now=old.expires_at + 7 * 86400 + 600)
    assert ledger.used(old) == 1
    ledger.consume_now(badge("later", 2), now=old.expires_at + KEEP_AFTER_EXPIRY_S + 1)
    assert ledger.used(old) == 0
    ledger.close()
