"""Errors that the CLI turns into a one-line message and a documented exit code.

Exit codes (also in README.md and the man pages):
  0 success, 1 internal error (a bug), 2 usage, 3 bad input data,
  4 integrity failure (checksum, truncated/forged file, bank or model hash mismatch),
  5 model not available, 6 cannot write (disk full, file size limit, read-only or forbidden folder;
  the old file is kept).
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_INTEGRITY = 4
EXIT_MODEL = 5
EXIT_WRITE = 6


class XpeftError(Exception):
    """Base class: every error a user can cause. `exit_code` is what the CLI returns."""

    exit_code = EXIT_INTERNAL


class UsageError(XpeftError):
    """Options that contradict each other or name something that does not exist."""

    exit_code = EXIT_USAGE


class DataError(XpeftError):
    """Input data that cannot be used: missing file or column, bad row, unknown label."""

    exit_code = EXIT_DATA


class IntegrityError(XpeftError):
    """A file that is not what it claims: bad magic, checksum, truncation, wrong bank."""

    exit_code = EXIT_INTEGRITY


class WrongBankError(IntegrityError):
    """A profile fitted on another bank (or of another shape than the bank's)."""


class ModelNotFoundError(XpeftError):
    """The PLM named by a bank or by --model cannot be loaded offline."""

    exit_code = EXIT_MODEL


class WriteError(XpeftError):
    """An output could not be written: the disk is full, a file size limit (ulimit -f) is hit, the folder
    is read-only or forbidden. Writes are atomic, so the file that was there before is kept."""

    exit_code = EXIT_WRITE


# errno values that mean "this output cannot be written here", not a bug
WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EFBIG", "EDQUOT", "EROFS", "EACCES", "EPERM") if hasattr(errno, name)
)


def write_error(dest: object, exc: OSError) -> WriteError:
    return WriteError(f"cannot write {dest}: {exc.strerror or exc} (nothing was replaced)")
