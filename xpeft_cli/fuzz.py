"""Mutations of every input xpeft reads, for fuzzing: .xpm files (`mutate`, by kind; tests/test_fuzz.py and
benchmarks/fuzz_xpm.py), and blind or structure-aware mutations of .xps stores, bank manifests, fit
checkpoints and data files (tests/test_fuzz_inputs.py and benchmarks/fuzz_inputs.py).

Each mutation is named by its kind, so results can be counted by kind. `resign` recomputes the
checksum after mutating, which drives the mutation past the CRC into the field checks.
"""

from __future__ import annotations

import copy
import json
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


# ---- blind byte mutations ---------------------------------------------------------------------
def blind(data: bytes, rng: random.Random) -> bytes:
    op = rng.randrange(6)
    b = bytearray(data)
    if op == 0 and b:  # flip 1-8 bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        b = b[: rng.randrange(len(b) + 1)]
    elif op == 2:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif op == 3 and b:  # overwrite a run with random bytes
        i = rng.randrange(len(b))
        for j in range(i, min(len(b), i + rng.randint(1, 16))):
            b[j] = rng.randrange(256)
    elif op == 4 and len(b) > 8:  # splice: repeat a chunk somewhere else
        i, j = sorted(rng.sample(range(len(b)), 2))
        k = rng.randrange(len(b))
        b[k:k] = b[i:j][:4096]
    else:  # set a run of bytes to 0xFF or 0x00 (huge or zero counts)
        if b:
            i = rng.randrange(len(b))
            fill = rng.choice((0, 255))
            for j in range(i, min(len(b), i + rng.choice((1, 2, 4, 8)))):
                b[j] = fill
    return bytes(b)


# ---- .xps stores -----------------------------------------------------------------------------
def store_structured(data: bytes, rng: random.Random) -> bytes:
    """Forge the header (count, buckets, index offset, re-checksummed) or index entries (offsets,
    lengths, keys; all entries pointing at one record; re-checksummed)."""
    from .store import ENTRY
    from .store import HEADER as STORE_HEADER

    b = bytearray(data)
    magic, major, minor, reserved, count, buckets, index_offset, crc = STORE_HEADER.unpack_from(b, 0)
    op = rng.randrange(4)
    if op == 0:
        count = rng.choice((0, 1, count + 1, 2**31, 2**32 - 1, rng.randrange(2**32)))
        buckets = rng.choice((buckets, buckets * 2, 1, 3, 2**31))
        struct.pack_into(STORE_HEADER.format, b, 0, magic, major, minor, reserved, count, buckets, index_offset, 0)
        struct.pack_into("<I", b, STORE_HEADER.size - 4, zlib.crc32(bytes(b[: STORE_HEADER.size - 4])))
        return bytes(b)
    entries = [list(ENTRY.unpack_from(b, index_offset + i * ENTRY.size)) for i in range(buckets)]
    full = [i for i, e in enumerate(entries) if e[0]]
    if op == 1 and full:  # every entry points at the first record (amplification)
        first = entries[full[0]]
        for i in full:
            entries[i][1], entries[i][2] = first[1], first[2]
    elif op == 2 and full:  # one entry's offset / length / key forged
        e = entries[rng.choice(full)]
        field = rng.choice((0, 1, 1, 2, 2))  # key, offset (u64), length (u32)
        value = rng.choice((0, 1, 31, 32, 33, len(b), 2**32 - 1, 2**63, rng.randrange(2**40)))
        e[field] = value % 2**32 if field == 2 else value
    elif full:  # overlap two records
        i, j = rng.sample(full, 2) if len(full) > 1 else (full[0], full[0])
        entries[j][1] = entries[i][1] + rng.randrange(0, 16)
    for i, e in enumerate(entries):
        struct.pack_into(ENTRY.format, b, index_offset + i * ENTRY.size, *e)
    end = index_offset + buckets * ENTRY.size
    struct.pack_into("<I", b, end, zlib.crc32(bytes(b[index_offset:end])))
    return bytes(b)


# ---- bank manifests -----------------------------------------------------------------------
def _leaves(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, prefix + (i,))
    yield prefix


WEIRD = [
    None,
    True,
    -1,
    0,
    1,
    2**31,
    2**63,
    10**30,
    1e308,
    -1e308,
    "x",
    "",
    "../../etc/passwd",
    [],
    {},
    [1, 2],
    65535,
    65536,
    1e-9,
    "NaN",
    "a" * 1000,
]


def _weird(rng: random.Random):
    """A fresh copy of a value of the wrong type or range (never the shared object: a mutated manifest
    must not come to contain itself)."""
    return copy.deepcopy(rng.choice(WEIRD))


def manifest_structured(data: bytes, rng: random.Random) -> bytes:
    m = json.loads(data)
    paths = [p for p in _leaves(m) if p]
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        parent = m
        try:
            for k in path[:-1]:
                parent = parent[k]
            if rng.random() < 0.15 and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = _weird(rng)
        except (KeyError, IndexError, TypeError):
            continue
    text = json.dumps(m)
    if rng.random() < 0.05:
        text = "[" * 100_000 + "]" * 100_000  # deep nesting
    return text.encode()


# ---- fit checkpoints ------------------------------------------------------------------------
def checkpoint_structured(data: bytes, rng: random.Random) -> bytes:
    """Rewrite the safetensors header JSON: metadata fields (position, profile identity, config) of
    the wrong type or out of range (mostly re-signed with a valid checksum, to reach the checks behind
    it), tensor shapes, dtypes and offsets forged."""
    (n,) = struct.unpack_from("<Q", data, 0)
    head = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    meta = head.get("__metadata__", {})
    keys = [k for k in head if k != "__metadata__"]
    op = rng.randrange(3)
    if op == 0 and meta:
        key = rng.choice(sorted(meta))
        try:
            inner = json.loads(meta[key])
            if isinstance(inner, dict) and inner:
                inner[rng.choice(sorted(inner))] = _weird(rng)
            else:
                inner = _weird(rng)
            meta[key] = json.dumps(inner)
        except ValueError:
            meta[key] = rng.choice(("", "{", "[]", "null"))
        if key != "checksum" and rng.random() < 0.7:  # re-sign, so the forged metadata meets the field checks
            from safetensors.torch import load

            from .checkpoint import checksum

            meta["checksum"] = checksum({k: str(v) for k, v in meta.items()}, load(data))
    elif op == 1 and keys:
        t = head[rng.choice(keys)]
        t["shape"] = [rng.choice((0, 1, 2, 7, 2**20, 2**40))] * rng.randint(0, 3)
    elif keys:
        t = head[rng.choice(keys)]
        if rng.random() < 0.5:
            t["dtype"] = rng.choice(("F16", "I64", "BOOL", "F64", "U8", "XX"))
        else:
            t["data_offsets"] = [rng.randrange(len(body) + 10), rng.randrange(len(body) + 10)]
    raw = json.dumps(head).encode()
    return struct.pack("<Q", len(raw)) + raw + body


# ---- data files --------------------------------------------------------------------------------
def data_structured(data: bytes, rng: random.Random, suffix: str) -> bytes:
    text = data.decode()
    lines = text.splitlines(keepends=True)
    op = rng.randrange(9)
    if op == 0:
        return b"\xef\xbb\xbf" + data  # BOM
    if op == 1:
        return text.replace("\n", "\r\n").encode()
    if op == 2:  # a byte that is not UTF-8 in a random line
        i = rng.randrange(len(data))
        return data[:i] + bytes([rng.choice((0xFF, 0xC3, 0x80, 0xFE))]) + data[i:]
    if op == 3:  # NaN / inf / huge labels
        bad = rng.choice(("NaN", "nan", "inf", "-Infinity", "1e999", '"1e999"', "null", "[]"))
        if suffix == ".jsonl":
            return text.replace('"label": "pos"', f'"label": {bad}', 1).encode()
        return text.replace("\tpos", "\t" + bad, 1).replace(",pos", "," + bad, 1).encode()
    if op == 4 and len(lines) > 2:  # ragged row
        i = rng.randrange(1, len(lines))
        lines[i] = lines[i].rstrip("\n") + rng.choice((",extra", "\textra", '"', ",", "")) + "\n"
        return "".join(lines).encode()
    if op == 5:
        return (text + "[" * 50_000 + "\n").encode()
    if op == 6:
        return b""
    if op == 7 and lines:  # drop or rename the header / a key
        return text.replace("text", rng.choice(("txt", "", "label", "text text")), 1).encode()
    return blind(data, rng)
