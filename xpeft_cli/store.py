"""Profile stores (.xps): many .xpm records in one file with a hash index, for O(1) lookups.

formats/xps.md is normative; this module follows its sections (§2 header, §3 records,
§4 index, §5 lookup). Each record is a complete .xpm file with its own checksum, so a store
is verified record by record with the same reader.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

from .atomic import atomic_path
from .errors import DataError, IntegrityError
from .profile import Profile
from .xpm import MAX_FILE, decode, encode

# §2 Header (32 bytes)
MAGIC = b"\x89XPS\r\n\x1a\n"
MAJOR, MINOR = 1, 0
HEADER = struct.Struct("<8sBBHIIQI")  # magic, major, minor, reserved, count, buckets, index offset, header crc
# §4 Index entry (24 bytes)
ENTRY = struct.Struct("<QQII")  # key, record offset, record length, reserved
MAX_RECORDS = 1 << 28


def name_key(name: str) -> int:
    """First 8 bytes of SHA-256(name) as u64 LE; 0 means an empty bucket, so 0 becomes 1."""
    k = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return k or 1


def _buckets_for(count: int) -> int:
    b = 1
    while b < 2 * max(count, 1):  # load factor ≤ 1/2: expected probes stay small
        b <<= 1
    return b


def write_store(profiles: list[Profile], path: str | os.PathLike) -> int:
    """Write a store atomically; names must be unique. Returns its size in bytes."""
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"two profiles are named {dup!r}; names in a store must be unique")
    buckets = _buckets_for(len(profiles))
    table = [(0, 0, 0)] * buckets
    offset = HEADER.size
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"\0" * HEADER.size)
            for p in profiles:  # §3 records
                data = encode(p)
                fh.write(data)
                slot = name_key(p.name) & (buckets - 1)
                while table[slot][0]:
                    slot = (slot + 1) & (buckets - 1)
                table[slot] = (name_key(p.name), offset, len(data))
                offset += len(data)
            index_offset = offset
            index = b"".join(ENTRY.pack(k, o, n, 0) for k, o, n in table)
            fh.write(index)
            fh.write(struct.pack("<I", zlib.crc32(index)))
            head = HEADER.pack(MAGIC, MAJOR, MINOR, 0, len(profiles), buckets, index_offset, 0)
            head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
            fh.seek(0)
            fh.write(head)
    return Path(path).stat().st_size


class Store:
    """A read-only store. Opening reads 32 bytes; each lookup reads a few index entries and one record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")
        except FileNotFoundError:
            raise DataError(f"{self.path}: no such store") from None
        self.size = os.fstat(self._fh.fileno()).st_size
        head = self._fh.read(HEADER.size)
        if len(head) < HEADER.size:
            raise IntegrityError(f"{self.path}: not a valid store: truncated header")
        magic, major, minor, reserved, count, buckets, index_offset, crc = HEADER.unpack(head)
        if magic != MAGIC:
            raise IntegrityError(f"{self.path}: not a valid store: wrong magic")
        if major != MAJOR:
            raise IntegrityError(f"{self.path}: store version {major}.{minor} is not supported")
        if zlib.crc32(head[:-4]) != crc:
            raise IntegrityError(f"{self.path}: not a valid store: header checksum mismatch")
        if (
            reserved
            or count > MAX_RECORDS
            or buckets & (buckets - 1)
            or buckets < 2 * max(count, 1)
            or index_offset < HEADER.size
            or index_offset + buckets * ENTRY.size + 4 != self.size
        ):
            raise IntegrityError(f"{self.path}: not a valid store: header fields do not fit the file size")
        self.count, self.buckets, self.index_offset = count, buckets, index_offset

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.count

    def _entry(self, slot: int) -> tuple[int, int, int]:
        self._fh.seek(self.index_offset + slot * ENTRY.size)
        key, off, length, _ = ENTRY.unpack(self._fh.read(ENTRY.size))
        if key and (off < HEADER.size or length > MAX_FILE or off + length > self.index_offset):
            raise IntegrityError(f"{self.path}: index entry {slot} points outside the records")
        return key, off, length

    def _record(self, off: int, length: int) -> Profile:
        self._fh.seek(off)
        try:
            return decode(self._fh.read(length)).profile
        except IntegrityError as exc:
            raise IntegrityError(f"{self.path}: record at offset {off}: {exc}") from None

    def get(self, name: str) -> Profile:
        """O(1) expected: linear probing from the name's bucket, at most `buckets` entries."""
        key = name_key(name)
        slot = key & (self.buckets - 1)
        for _ in range(self.buckets):
            k, off, length = self._entry(slot)
            if k == 0:
                break
            if k == key:
                p = self._record(off, length)
                if p.name == name:
                    return p
            slot = (slot + 1) & (self.buckets - 1)
        self._check_index()  # "no such profile" only from an index that is intact
        raise DataError(f"{self.path}: no profile named {name!r}")

    def _check_index(self) -> bytes:
        """The whole index, after checking its checksum (a damaged index is exit 4, never a miss)."""
        self._fh.seek(self.index_offset)
        index = self._fh.read(self.buckets * ENTRY.size)
        (crc,) = struct.unpack("<I", self._fh.read(4))
        if zlib.crc32(index) != crc:
            raise IntegrityError(f"{self.path}: not a valid store: index checksum mismatch")
        return index

    def __iter__(self) -> Iterator[Profile]:
        """All profiles in file order; also verifies the index checksum."""
        index = self._check_index()
        entries = sorted(
            (e for e in (ENTRY.unpack_from(index, i * ENTRY.size) for i in range(self.buckets)) if e[0]),
            key=lambda e: e[1],
        )  # file order
        if len(entries) != self.count:
            raise IntegrityError(f"{self.path}: index holds {len(entries)} records, header says {self.count}")
        end = HEADER.size
        for key, off, length, _ in entries:
            if off < HEADER.size or off + length > self.index_offset:
                raise IntegrityError(f"{self.path}: index entry points outside the records")
            if off < end:  # two entries for one record (or overlapping ones) would read it twice
                raise IntegrityError(f"{self.path}: index entries overlap at offset {off}")
            end = off + length
            p = self._record(off, length)
            if name_key(p.name) != key:
                raise IntegrityError(f"{self.path}: record {p.name!r} is filed under another name's key")
            yield p


def is_store(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == MAGIC
    except OSError:
        return False
