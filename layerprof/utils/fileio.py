"""Atomic, world-readable file writes for every output layerprof produces.

``atomic_write_text`` writes to a temporary file in the target's directory and renames it
over the target, so a failed or interrupted write leaves any old file intact and a reader
never sees half a file. ``tempfile.mkstemp`` creates files 0600; outputs are meant to be
shared (a card checked into a repository, a config read by a trainer running as another
user), so the file gets the mode a plain ``open()`` would give: 0666 minus the umask
(0644 under the usual umask 022).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
