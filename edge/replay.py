"""The replay cache: nonces of accepted signed commands, kept until they expire.

Persisted (one small JSON file, rewritten atomically and fsynced on every accepted
command: commands are rare), so a command captured on the wire cannot act again even
after the agent restarts. Bounded: entries are dropped :data:`KEEP_AFTER_EXPIRY_S` after
their command expired (beyond any clock leeway, so a command cannot outlive its nonce),
and at most :data:`MAX_ENTRIES` are kept (the oldest expiring first).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edge.atomic import write_atomically

log = logging.getLogger(__name__)

MAX_ENTRIES = 10_000
KEEP_AFTER_EXPIRY_S = 900  # a command verifies until exp + leeway (at most 600 s)


class ReplayCache:
    """``first_use(nonce, expires_at, now)`` is True once per nonce."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: dict[str, float] = {}
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            self._seen = {str(k): float(v) for k, v in loaded.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.error("replay cache %s unreadable (%s): starting empty", path, exc)

    def first_use(self, nonce: str, *, expires_at: float, now: float) -> bool:
        """Record ``nonce``; False if it was seen before (a replay). Raises OSError if the
        nonce cannot be saved: the caller must then refuse the command."""
        if nonce in self._seen:
            return False
        self._seen = {k: v for k, v in self._seen.items() if v >= now - KEEP_AFTER_EXPIRY_S}
        self._seen[nonce] = expires_at
        if len(self._seen) > MAX_ENTRIES:
            for key, _ in sorted(self._seen.items(), key=lambda kv: kv[1])[
                    : len(self._seen) - MAX_ENTRIES]:
                del self._seen[key]
        self._save()
        return True

    def _save(self) -> None:
        write_atomically(self.path, json.dumps(self._seen, separators=(",", ":")))
