"""Atomic file writes: a temp file in the destination folder, fsync, ``os.replace``.

A crash or Ctrl-C mid-write never leaves a half-written file under the final name,
and never destroys the previous version of that file.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

MAX_NAME = 255  # bytes in one path component on common file systems


def check_writable_dir(folder: Path) -> None:
    """Raise ``OSError`` naming ``folder`` if files cannot be created in it."""
    if not folder.is_dir():
        raise OSError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"output folder is not writable: {folder}")


def temp_prefix(dest: Path) -> str:
    """``.<name>.`` for a temp file beside ``dest``, the name shortened so that the temp name fits
    ``MAX_NAME`` too (a legal 250-character destination must not fail for its temp name)."""
    name = dest.name
    while len(f".{name}.XXXXXXXX.part".encode()) > MAX_NAME:
        name = name[:-1]
    return f".{name}."


def check_replaceable(dest: Path) -> None:
    """Refuse to replace a file the user made read-only."""
    if dest.is_file() and (not dest.stat().st_mode & 0o222 or not os.access(dest, os.W_OK)):
        raise OSError(f"{dest} is read-only; it was left as it is (make it writable, or write elsewhere)")
    if dest.is_dir():
        raise OSError(f"{dest} is a folder; give a file name")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, durable: bool = True):
    """Yield a temporary path beside ``dest``; on success it becomes ``dest``.

    The caller writes the whole file to the yielded path (ending in ``.part``, so
    writers must be told the format explicitly). On an exception (Ctrl-C and SIGTERM
    included, which the CLI turns into exceptions) the temp file is removed and ``dest``
    is untouched. ``durable``: fsync the file and the folder before returning; a bulk
    writer passes False and syncs once at the end (``sync_folder``).
    """
    with atomic_paths([dest], durable) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(dests: Sequence[str | os.PathLike], durable: bool = True):
    """``atomic_path`` for several files that belong together (a strip and its animation): every temp
    file is written first, and only when all are complete do they replace their destinations."""
    dests = [Path(d) for d in dests]
    temps: list[Path] = []
    try:
        for dest in dests:
            check_writable_dir(dest.parent.resolve())
            check_replaceable(dest)
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dest), suffix=".part", dir=dest.parent)
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        for tmp in temps:
            if durable:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the file normal permissions
        for tmp, dest in zip(temps, dests):
            os.replace(tmp, dest)
        if durable:
            for folder in {d.parent for d in dests}:
                _fsync_dir(folder)
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike, overwrite: bool = False):
    """Yield a fresh temporary folder beside ``dest``; on success it becomes ``dest``.

    ``dest`` may not exist yet, or be empty; a non-empty ``dest`` is refused unless ``overwrite``,
    and then replaced whole (no file of an earlier, larger run stays; two writers never mix).
    On an exception the temporary folder is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    check_writable_dir(dest.parent.resolve())
    check_folder_target(dest, overwrite)
    stage = Path(tempfile.mkdtemp(prefix=temp_prefix(dest), suffix=".part", dir=dest.parent))
    try:
        yield stage
        os.chmod(stage, 0o777 & ~UMASK)
        if dest.is_dir() and any(dest.iterdir()):
            check_folder_target(dest, overwrite)  # it may have filled up meanwhile
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(dest), suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
            os.replace(stage, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if dest.is_dir():
                dest.rmdir()
            os.replace(stage, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def check_folder_target(dest: Path, overwrite: bool) -> None:
    """A folder output may be new or empty; a non-empty one only with ``overwrite``."""
    if dest.exists() and not dest.is_dir():
        raise OSError(f"{dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise OSError(f"{dest} is not empty; pass --overwrite to replace it whole, or name a new folder")


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``dest`` with ``data``."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def _read_umask() -> int:
    """The process umask, read once at import: from /proc where it can be read without changing it,
    else by setting and restoring it (at import time, before any thread of ours writes files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


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
