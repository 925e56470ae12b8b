"""Crash-safe file writes: a reader sees the old file or the new one, never half of either.

The data goes to a temp file beside the target, is flushed to disk (fsync), and is renamed over
the target; the folder entry is fsynced too, so a power cut after the rename keeps the new file.
A failed write (a full disk, a read-only folder) removes the temp file and says which file, why,
and how much space is left.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunFileError(OSError):
    """A run's output file could not be written; the message names the file and what to do."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; on a clean exit it replaces `path` durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RunFileError(err.errno, _explain(path, err)) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _explain(path: Path, err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(path.parent).free
        return (f"cannot write {path}: no space left on the device ({free / 2**20:.1f} MiB free there); "
                "free some space or choose another --output_dir")  # fmt: skip
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {err.strerror}; choose another --output_dir"
    return f"cannot write {path}: {err.strerror or err}"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
