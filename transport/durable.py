"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

Theory of operation
-------------------
One file, as a crash may leave it at each step::

    (absent) --mkstemp--> TEMP (.tmp-*, any content) --write+fsync--> TEMP (complete)
             --rename--> VISIBLE (complete) --fsync(dir)--> VISIBLE, durable

`rename(2)` within one directory is atomic (POSIX): a reader, or the next process after a
crash, sees either no file or the whole file, never part of one. The data is fsynced before
the rename, so the name never points at blocks that were not written yet; the directory is
fsynced after it, so the new name itself survives power loss (ext4 and XFS otherwise may
forget a fresh directory entry). A crash leaves at most a `TEMP_PREFIX` file behind, which
the owner deletes on start (`remove_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

TEMP_PREFIX: Final = ".tmp-"
FILE_MODE: Final = 0o644


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Make `path` hold exactly `data`, durably; a crash leaves the old file or the new.

    The temporary file is created with mode 0600 and changed to `mode` before it gets its
    name, so a secret written with `mode=0o600` is never readable by others.
    """
    write_atomic_parts(path, (data,), mode)


def write_atomic_parts(path: Path, parts: Iterable[bytes], mode: int = FILE_MODE) -> None:
    """`write_atomic` of the concatenation of `parts`, streamed (nothing held in memory)."""
    descriptor, temporary = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)


def fsync_directory(path: Path) -> None:
    """Flush `path`'s directory entries (new, renamed or removed names) to disk."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def make_directory(path: Path) -> None:
    """Create `path` (and parents) and make the new entries durable."""
    missing = [path, *path.parents]
    missing = [directory for directory in missing if not directory.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for directory in reversed(missing):
        fsync_directory(directory.parent)


def remove_temporaries(directory: Path) -> int:
    """Delete the `TEMP_PREFIX` files and folders a crash left in `directory`; return how many."""
    removed = 0
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(TEMP_PREFIX):
            remove_tree(entry)
            removed += 1
    return removed


def remove_tree(path: Path) -> None:
    """Delete a file or a whole directory tree (not following symbolic links)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
