"""The replay cache: a nonce is refused as long as its command could still verify."""

from __future__ import annotations

from pathlib import Path

from edge.replay import KEEP_AFTER_EXPIRY_S, ReplayCache

NOW = 1_800_000_000


def test_a_nonce_outlives_its_command_by_more_than_any_leeway(tmp_path: Path) -> None:
    cache = ReplayCache(tmp_path / "seen")
    assert cache.first_use("a", expires_at=NOW + 60, now=NOW)
    # Another command arrives 10 minutes after "a" expired (the leeway may be 600 s).
    assert cache.first_use("b", expires_at=NOW + 660, now=NOW + 660)
    assert not cache.first_use("a", expires_at=NOW + 60, now=NOW + 660)
    assert not ReplayCache(tmp_path / "seen").first_use("a", expires_at=NOW + 60, now=NOW + 61)
    later = NOW + 60 + KEEP_AFTER_EXPIRY_S + 1
    assert cache.first_use("c", expires_at=later + 60, now=later)
    assert "a" not in ReplayCache(tmp_path / "seen")._seen  # dropped once it cannot verify
