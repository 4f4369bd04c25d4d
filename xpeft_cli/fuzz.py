"""Mutations of .xpm files for fuzzing the reader (used by tests/test_fuzz.py and benchmarks/fuzz_xpm.py).

Each mutation is named by its kind, so results can be counted by kind. `resign` recomputes the
checksum after mutating, which drives the mutation past the CRC into the field checks.
"""

from __future__ import annotations

import random
import struct
import zlib

from .xpm import HEADER

KINDS = (
    "bitflip",
    "truncate",
    "forge_length",
    "forge_count",
    "huge_dims",
    "wrong_magic",
    "wrong_version",
    "random_bytes",
    "append",
    "splice",
)


def field_offsets(data: bytes) -> tuple[list[int], list[int]]:
    """Offsets of (u32 section lengths, u16 counts inside sections) of a valid file, found by walking it."""
    from .xpm import SEC_HEAD, SEC_LABELS, SEC_LN, SECTION_HEADER, mask_bytes

    _, _, _, enc, _, n, L, _, _, name_len = HEADER.unpack_from(data, 0)
    pos = HEADER.size + name_len + mask_bytes(enc, n, L)
    lengths, counts = [], []
    while pos < len(data) - 4:
        sec_id, length = SECTION_HEADER.unpack_from(data, pos)
        lengths.append(pos + 1)
        payload = pos + SECTION_HEADER.size
        counts += {SEC_LN: [payload + 1], SEC_HEAD: [payload + 2, payload + 4], SEC_LABELS: [payload]}.get(sec_id, [])
        pos = payload + length
    return lengths, counts


def resign(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    body = bytearray(data[:-4])
    if kind == "bitflip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out) if rng.random() < 0.5 else resign(bytes(out[:-4]))
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    lengths, counts = field_offsets(data) if kind in ("forge_length", "forge_count") else ([], [])
    if kind == "forge_length":  # a section length claiming more (or less) than the file holds
        if not lengths:
            body[50] = rng.randrange(256)  # no sections: forge the name length instead
            return resign(bytes(body))
        pos = rng.choice(lengths)
        body[pos : pos + 4] = struct.pack(
            "<I", rng.choice([2**32 - 1, 2**31, len(data) * 1000, rng.randrange(2**32), 0])
        )
        return resign(bytes(body))
    if kind == "forge_count":  # label count, C, d or b forged inside a section
        if not counts:
            body[12:14] = struct.pack("<H", rng.randrange(65536))
            return resign(bytes(body))
        pos = rng.choice(counts)
        body[pos : pos + 2] = struct.pack("<H", rng.choice([0, 1, 65535, rng.randrange(65536)]))
        return resign(bytes(body))
    if kind == "huge_dims":
        off = rng.choice([12, 14, 16, 50])
        if off == 50:
            body[50] = rng.choice([0, 255])
        else:
            body[off : off + 2] = struct.pack("<H", rng.choice([0, 65535, 4097, rng.randrange(65536)]))
        return resign(bytes(body))
    if kind == "wrong_magic":
        body[rng.randrange(8)] = rng.randrange(256)
        return resign(bytes(body))
    if kind == "wrong_version":
        body[8] = rng.choice([0, 2, 255])
        return resign(bytes(body))
    if kind == "random_bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    if kind == "append":
        return resign(bytes(body) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))))
    if kind == "splice":  # a slice of the file repeated or removed
        a = rng.randrange(len(body))
        b = rng.randrange(a, len(body) + 1)
        return resign(bytes(body[:a] + body[b:] if rng.random() < 0.5 else body[:b] + body[a:]))
    raise ValueError(kind)
