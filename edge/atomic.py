"""Small state files written so that a power cut leaves the old version or the new one.

The text goes to ``<name>.tmp``, is fsynced, renamed over the file, and the directory is
fsynced so that the rename itself survives. Used for the time floor, the replay cache,
the denylist, the trust bundle and the remote configuration items.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, text: str, *, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text``, durably; raise OSError if it cannot."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding=encoding) as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
