"""Bytes a streaming decoder discards between frames, reported in runs.

Sans-I/O. A decoder hands every byte it skips to :meth:`GarbageRun.skip`; each time the
run reaches ``limit`` bytes, and when a good frame ends a shorter run (:meth:`end`), the
decoder reports one error with the run's length and its first ``sample`` bytes. So noise
costs a bounded number of reports however it is split across reads.
"""

from __future__ import annotations

GARBAGE_RUN_BYTES = 256  # a longer run of discarded bytes is reported in pieces this long
SAMPLE_BYTES = 32


class GarbageRun:
    """The run of discarded bytes not yet reported: its length and its first bytes."""

    def __init__(self, limit: int = GARBAGE_RUN_BYTES, sample: int = SAMPLE_BYTES) -> None:
        self.limit, self._sample_max = limit, sample
        self.pending = 0  # bytes in the run not yet reported
        self._sample = bytearray()

    def skip(self, data: bytes | bytearray) -> list[tuple[bytes, int]]:
        """Add ``data`` to the run; return ``(sample, length)`` of every run it completed."""
        done = []
        start, stop = 0, len(data)
        while start < stop:
            take = min(self.limit - self.pending, stop - start)
            if len(self._sample) < self._sample_max:
                self._sample += data[start:start + min(take, self._sample_max - len(self._sample))]
            self.pending += take
            start += take
            if self.pending == self.limit:
                done.append(self._take())
        return done

    def end(self) -> tuple[bytes, int] | None:
        """A good frame ends the run: ``(sample, length)`` if there was one."""
        return self._take() if self.pending else None

    def _take(self) -> tuple[bytes, int]:
        run = (bytes(self._sample), self.pending)
        self.pending = 0
        self._sample.clear()
        return run
