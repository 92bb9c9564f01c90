"""Atomic file writes, shared by run folders, checkpoints and learned models of variation.

The data goes to a temp file beside the target, is fsync'ed, then renamed over it, and the directory entry is
fsync'ed: a reader (or a resumed run) sees the old file or the new one, never half of one. Temp names carry
TEMP_MARK so a temp file left by a killed writer can be recognised and removed later.
"""

from __future__ import annotations

import os
from pathlib import Path

TEMP_MARK = ".tmp-"


def atomic_write(path: Path, write) -> None:
    """``write(file_object)`` into ``path`` atomically (temp + fsync + rename + directory fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
