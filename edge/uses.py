"""The use ledger: how often each limited-use badge has opened a compartment here.

A badge with a use limit (``use``; 1 is single use) is consumed durably *before* the
decision is recorded and the coil energised: the count is committed (SQLite,
``synchronous=FULL``) first, so a power cut can cost a member a use but never give one
back. Counts are per device and per badge (issuer and ``jti``); rows are dropped
:data:`KEEP_AFTER_EXPIRY_S` after their badge expired, which bounds the file. That margin
exceeds the largest clock leeway plus the largest forward clock jump still graded
``floor``, so no clock error can drop a row while its badge could still verify.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from provisioning.badges import Badge

KEEP_AFTER_EXPIRY_S = 8 * 86400  # > max leeway (600 s) + max trusted forward jump (7 days)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uses (
    issuer TEXT NOT NULL,
    badge_id TEXT NOT NULL,
    used INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, badge_id)
) WITHOUT ROWID;
"""


class UseLedger:
    """Counts uses of limited badges in ``path``; :meth:`consume` is the only writer."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # A member is waiting: a locked file (an operator's sqlite3 shell) fails the use
        # after a second, and the scan is refused, rather than holding the reader.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=1.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def consume_now(self, badge: Badge, *, now: float) -> bool:
        """Use ``badge`` once if it has uses left; False when it is used up. Blocking;
        raises ``sqlite3.Error`` when the use cannot be recorded (the caller refuses)."""
        if badge.use_limit is None:
            return True
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM uses WHERE expires_at < ?",
                                 (now - KEEP_AFTER_EXPIRY_S,))
                row = self._db.execute(
                    "SELECT used FROM uses WHERE issuer = ? AND badge_id = ?",
                    (badge.issuer, badge.badge_id)).fetchone()
                used = 0 if row is None else int(row[0])
                if used >= badge.use_limit:
                    self._db.execute("COMMIT")
                    return False
                self._db.execute(
                    "INSERT INTO uses (issuer, badge_id, used, expires_at) VALUES (?, ?, 1, ?)"
                    " ON CONFLICT (issuer, badge_id) DO UPDATE SET used = used + 1",
                    (badge.issuer, badge.badge_id, badge.expires_at))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    async def consume(self, badge: Badge, *, now: float) -> bool:
        """:meth:`consume_now` off the event loop (it waits for an fsync)."""
        if badge.use_limit is None:
            return True
        return await asyncio.to_thread(self.consume_now, badge, now=now)

    def used(self, badge: Badge) -> int:
        """How many times ``badge`` has been used here."""
        with self._lock:
            row = self._db.execute("SELECT used FROM uses WHERE issuer = ? AND badge_id = ?",
                                   (badge.issuer, badge.badge_id)).fetchone()
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
