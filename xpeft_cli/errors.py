"""Errors that the CLI turns into a one-line message and a documented exit code.

Exit codes (also in README.md and the man pages):
  0 success, 1 internal error (a bug), 2 usage, 3 bad input data,
  4 integrity failure (checksum, truncated/forged file, bank or model hash mismatch),
  5 model not available.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_INTEGRITY = 4
EXIT_MODEL = 5


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
