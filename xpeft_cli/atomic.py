"""Crash-safe file writes: temp file in the destination folder, fsync, rename.

A reader (or a crash) sees either the old complete file or the new complete file,
never a partial one, because rename within one filesystem is atomic on POSIX.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import WRITE_ERRNOS, write_error


def _fsync_dir(folder: Path) -> None:
    # Persist the rename itself; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest` atomically.

    For writers that insist on a file name (safetensors.save_file, json dumps).
    """
    dest = Path(dest)
    folder = dest.parent if str(dest.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask)  # again: a writer may have made the file anew (safetensors does, 0600)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
        _fsync_dir(folder)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:  # a full disk, not a bug: exit 6
            raise write_error(dest, exc) from None
        raise


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_with(dest: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Run `writer(tmp_path)` and move the result into place atomically."""
    with atomic_path(dest) as tmp:
        writer(tmp)


@contextlib.contextmanager
def locked(dest: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of `dest` (a store that several `pack` or
    `serve` processes add to): each waits for the other, then reads what the last one wrote, so no
    addition is lost. An advisory flock on a hidden `.NAME.lock` file beside `dest`, released when the
    holder exits or dies (a killed process leaves no stale lock). Where fcntl is missing (Windows),
    writes stay atomic but are not serialized."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    dest = Path(dest)
    folder = dest.parent if str(dest.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f".{dest.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
