"""Profile names: which are legal, and the one place where a name becomes a file name.

A name is data (an author, a customer id) and is stored as it is in the .xpm: any text of 1..255
UTF-8 bytes without control characters. It never becomes a path as it is: the file name is
`profile_filename(name)`, the name itself when it is a plain file name of letters, digits, `.`,
`_` and `-` (at most 80, not starting or ending with `.` or `_`), or else a cleaned stem and a hash of the name,
so "../../x", "/etc/passwd" or "a/b" cannot leave the folder a profile is written to.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from .errors import DataError

MAX_NAME = 255  # UTF-8 bytes, as formats/xpm.md allows


def check_name(name: object, where: str = "profile name") -> str:
    """`name` if it is a legal profile name; otherwise DataError (exit 3) saying why."""
    if not isinstance(name, str) or not name:
        raise DataError(f"{where} must be non-empty text")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME:
        raise DataError(f"{where} must be 1..{MAX_NAME} UTF-8 bytes, got {size}")
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise DataError(f"{where} {name[:40]!r} holds a control character (U+{ord(bad):04X})")
    return name


def profile_filename(name: str) -> str:
    """A file-system-safe stem for a profile name ("Lee Moran, Contributor" → "Lee_Moran_Contributor-1a2b3c")."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80]
    if stem == name:
        return name
    return f"{stem or 'profile'}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:6]}"
