"""Atomic file writes: a temp file in the destination folder, fsync, ``os.replace``.

A crash or Ctrl-C mid-write never leaves a half-written file under the final name,
and never destroys the previous version of that file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def check_writable_dir(folder: Path) -> None:
    """Raise ``OSError`` naming ``folder`` if files cannot be created in it."""
    if not folder.is_dir():
        raise OSError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"output folder is not writable: {folder}")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, durable: bool = True):
    """Yield a temporary path beside ``dest``; on success it becomes ``dest``.

    The caller writes the whole file to the yielded path (ending in ``.part``, so
    writers must be told the format explicitly). On an exception the temp file is
    removed and ``dest`` is untouched. ``durable``: fsync the file and the folder before
    returning; a bulk writer passes False and syncs once at the end (``sync_folder``).
    """
    dest = Path(dest)
    check_writable_dir(dest.parent.resolve())
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, dest)
        if durable:
            _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``dest`` with ``data``."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sync_folder(folder: Path) -> None:
    """Make everything written so far durable, once: the files (``os.sync``) and ``folder``'s entries."""
    if hasattr(os, "sync"):
        os.sync()
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not supported on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
