"""Reader and writer of .xpm profile files. formats/xpm.md is normative; the sections of
this module follow it: §2 header, §3 name, §4 masks, §5 sections, §6 checksum, §7 limits.

The reader never trusts a length: every size is computed from already-validated header
fields or checked against the bytes that remain, before anything is allocated.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bitarray import bitarray

from .atomic import atomic_write_bytes
from .config import STORED_KINDS
from .errors import DataError, IntegrityError
from .profile import Profile

# §2 Header -------------------------------------------------------------------------------
MAGIC = b"\x89XPM\r\n\x1a\n"
MAJOR, MINOR = 1, 0
MINOR_SIGN = 1  # 1.1 added mask encoding 3 (sign bits); files without it are still written as 1.0
HEADER = struct.Struct("<8sBBBBHHH32sB")  # magic, major, minor, encoding, reserved, N, L, k, bank hash, name len
ENC_HARD, ENC_SOFT_F16, ENC_SOFT_F32, ENC_SIGN = 0, 1, 2, 3
BIT_ENCODINGS = (ENC_HARD, ENC_SIGN)
CHECKSUM_SIZE = 4

# §5 Sections ---------------------------------------------------------------------------
SEC_LN, SEC_HEAD, SEC_LABELS, SEC_META = 0x01, 0x02, 0x03, 0x80
SECTION_NAMES = {SEC_LN: "ln", SEC_HEAD: "head", SEC_LABELS: "labels", SEC_META: "meta"}
SECTION_HEADER = struct.Struct("<BI")
DTYPES: dict[int, np.dtype] = {1: np.dtype("<f2"), 2: np.dtype("<f4")}
DTYPE_CODES = {"float16": 1, "float32": 2}
TASKS = {0: "classification", 1: "regression"}
TASK_CODES = {v: k for k, v in TASKS.items()}

# §7 Limits -----------------------------------------------------------------------------
MAX_N, MAX_L, MAX_NAME, MAX_LABEL, MAX_FILE = 65535, 4096, 255, 255, 256 * 1024 * 1024


@dataclass
class Decoded:
    profile: Profile
    version: tuple[int, int]
    sizes: dict[str, int]  # bytes per part of the file, summing to the file size
    skipped_sections: list[int]  # ancillary sections this reader does not know


def _row_bytes(n: int) -> int:
    return (n + 7) // 8


def mask_bytes(encoding: int, n: int, L: int) -> int:
    per = {ENC_HARD: _row_bytes(n), ENC_SIGN: _row_bytes(n), ENC_SOFT_F16: 2 * n, ENC_SOFT_F32: 4 * n}[encoding]
    return 2 * L * per


# ---- writer -----------------------------------------------------------------------------
def _pack_bits(rows: np.ndarray) -> bytes:
    out = bytearray()
    for row in rows:
        out += bitarray([bool(v) for v in row], endian="big").tobytes()  # MSB first, zero padding
    return bytes(out)


def _section(sec_id: int, payload: bytes) -> bytes:
    return SECTION_HEADER.pack(sec_id, len(payload)) + payload


def encode(p: Profile) -> bytes:
    """The canonical bytes of a profile: equal profiles give identical files.

    The writer reads its own bytes back with the reader before returning them: one validation
    for both, so it can never write a file that `decode` refuses (e.g. a hard row with more
    bits set than k, a label list longer than its u16 count, a NaN weight).
    """
    try:
        data = _encode(p)
    except (struct.error, OverflowError, ValueError) as exc:
        raise DataError(f"profile {p.name!r} cannot be written as .xpm: {exc}") from None
    try:
        _decode(memoryview(data))
    except _Bad as exc:
        raise DataError(f"profile {p.name!r} cannot be written as .xpm: {exc}") from None
    return data


def _encode(p: Profile) -> bytes:
    name = p.name.encode("utf-8")
    if not 1 <= len(name) <= MAX_NAME:
        raise DataError(f"profile name must be 1..{MAX_NAME} UTF-8 bytes")
    if not (1 <= p.n <= MAX_N and 1 <= p.L <= MAX_L):
        raise DataError(f"N must be 1..{MAX_N} and L 1..{MAX_L}")
    if p.mask_kind not in STORED_KINDS:
        raise DataError(f"mask kind {p.mask_kind!r} has no .xpm encoding")
    if p.mask_kind in ("hard", "sign"):
        enc = ENC_HARD if p.mask_kind == "hard" else ENC_SIGN
        masks = _pack_bits(p.mask_a) + _pack_bits(p.mask_b)
    else:
        enc = ENC_SOFT_F16 if p.soft_dtype == "float16" else ENC_SOFT_F32
        dt = DTYPES[enc]
        masks = np.asarray(p.mask_a).astype(dt).tobytes() + np.asarray(p.mask_b).astype(dt).tobytes()
    out = bytearray(
        HEADER.pack(
            MAGIC,
            MAJOR,
            MINOR_SIGN if enc == ENC_SIGN else MINOR,
            enc,
            0,
            p.n,
            p.L,
            p.k if enc == ENC_HARD else 0,
            bytes.fromhex(p.bank_hash),
            len(name),
        )
    )
    out += name + masks
    code = DTYPE_CODES.get(p.param_dtype)
    if code is None:
        raise DataError(f"parameter dtype must be one of {', '.join(DTYPE_CODES)}")
    dt = DTYPES[code]
    if (p.ln_weight is None) != (p.ln_bias is None) or (p.head_weight is None) != (p.head_bias is None):
        raise DataError("a weight without its bias (or a bias without its weight) cannot be written")
    if p.ln_weight is not None and p.ln_bias is not None:
        L, b = p.ln_weight.shape
        payload = struct.pack("<BH", code, b) + p.ln_weight.astype(dt).tobytes() + p.ln_bias.astype(dt).tobytes()
        out += _section(SEC_LN, payload)
    if p.head_weight is not None and p.head_bias is not None:
        c, d = p.head_weight.shape
        payload = (
            struct.pack("<BBHH", code, TASK_CODES[p.task], c, d)
            + p.head_weight.astype(dt).tobytes()
            + p.head_bias.astype(dt).tobytes()
        )
        out += _section(SEC_HEAD, payload)
    if p.labels:
        if len(p.labels) > 65535:
            raise DataError(f"{len(p.labels)} labels: an .xpm holds at most 65535")
        labels = bytearray(struct.pack("<H", len(p.labels)))
        for lab in p.labels:
            raw = str(lab).encode("utf-8")
            if not 1 <= len(raw) <= MAX_LABEL:
                raise DataError(f"label {lab!r} must be 1..{MAX_LABEL} UTF-8 bytes")
            labels += bytes([len(raw)]) + raw
        out += _section(SEC_LABELS, bytes(labels))
    if p.meta:
        out += _section(SEC_META, json.dumps(p.meta, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def write_xpm(p: Profile, path: str | os.PathLike) -> int:
    data = encode(p)
    atomic_write_bytes(path, data)
    return len(data)


# ---- reader -----------------------------------------------------------------------------
class _Bad(Exception):
    pass


def _need(buf: memoryview, pos: int, size: int, what: str) -> None:
    if size < 0 or pos + size > len(buf):
        raise _Bad(f"truncated: {what} needs {size} bytes at offset {pos}, file has {len(buf) - pos} left")


def _floats(buf: memoryview, pos: int, dtype: np.dtype, count: int, what: str) -> np.ndarray:
    _need(buf, pos, count * dtype.itemsize, what)
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=pos).astype(np.float32)
    if not np.isfinite(arr).all():
        raise _Bad(f"{what} holds NaN or infinity")
    return arr


def _unpack_bits(buf: memoryview, pos: int, n: int, L: int, k: int | None, what: str) -> np.ndarray:
    """L rows of N bits; a hard row (k given) must have exactly k set, a sign row (k None) any number."""
    rb = _row_bytes(n)
    rows = np.zeros((L, n), dtype=bool)
    for l in range(L):
        ba = bitarray(endian="big")
        ba.frombytes(bytes(buf[pos + l * rb : pos + (l + 1) * rb]))
        if ba[n:].any():
            raise _Bad(f"{what} row {l}: padding bits are not zero")
        row = ba[:n]
        if k is not None and row.count() != k:
            raise _Bad(f"{what} row {l}: {row.count()} adapters selected, header says k={k}")
        rows[l] = np.frombuffer(row.unpack(), dtype=bool)
    return rows


def decode(data: bytes) -> Decoded:
    try:
        return _decode(memoryview(data))
    except _Bad as exc:
        raise IntegrityError(f"not a valid .xpm: {exc}") from None


def _decode(buf: memoryview) -> Decoded:
    size = len(buf)
    if size < HEADER.size + 1 + CHECKSUM_SIZE:
        if bytes(buf[:8]) != MAGIC[: min(8, size)]:
            raise _Bad("wrong magic (not an .xpm file)")
        raise _Bad(f"truncated: {size} bytes is shorter than the smallest .xpm")
    magic, major, minor, enc, reserved, n, L, k, bank_hash, name_len = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        if magic[1:4] == b"XPM":
            raise _Bad("magic damaged (was the file transferred in text mode?)")
        raise _Bad("wrong magic (not an .xpm file)")
    if major != MAJOR:
        raise _Bad(f"format version {major}.{minor} is not supported (this reader reads {MAJOR}.x)")
    # §6: the checksum is checked before any field is trusted.
    stored = struct.unpack_from("<I", buf, size - CHECKSUM_SIZE)[0]
    if zlib.crc32(buf[: size - CHECKSUM_SIZE]) != stored:
        raise _Bad("checksum mismatch (file is damaged or truncated)")
    if reserved != 0:
        raise _Bad("reserved header byte is not zero")
    if enc not in (ENC_HARD, ENC_SOFT_F16, ENC_SOFT_F32, ENC_SIGN):
        raise _Bad(f"unknown mask encoding {enc}")
    if not (1 <= n <= MAX_N and 1 <= L <= MAX_L):
        raise _Bad(f"N={n} or L={L} out of range")
    if enc == ENC_HARD and not 1 <= k <= n:
        raise _Bad(f"k={k} out of range for N={n}")
    if enc != ENC_HARD and k != 0:
        raise _Bad("soft and sign masks must have k=0")
    end = size - CHECKSUM_SIZE
    body = buf[:end]
    pos = HEADER.size
    sizes = {"header": HEADER.size}
    # §3 Name
    _need(body, pos, name_len, "name")
    if name_len == 0:
        raise _Bad("empty profile name")
    try:
        name = bytes(body[pos : pos + name_len]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("profile name is not UTF-8") from None
    pos += name_len
    sizes["name"] = name_len
    # §4 Masks
    mb = mask_bytes(enc, n, L)
    _need(body, pos, mb, "masks")
    if enc in BIT_ENCODINGS:
        half = L * _row_bytes(n)
        need = k if enc == ENC_HARD else None
        mask_a = _unpack_bits(body, pos, n, L, need, "M_A")
        mask_b = _unpack_bits(body, pos + half, n, L, need, "M_B")
    else:
        dt = DTYPES[1 if enc == ENC_SOFT_F16 else 2]
        mask_a = _floats(body, pos, dt, L * n, "M_A").reshape(L, n)
        mask_b = _floats(body, pos + L * n * dt.itemsize, dt, L * n, "M_B").reshape(L, n)
    pos += mb
    sizes["masks"] = mb
    kind = {ENC_HARD: "hard", ENC_SIGN: "sign"}.get(enc, "soft")
    profile = Profile(
        name=name,
        mask_kind=kind,
        n=n,
        L=L,
        k=k,
        bank_hash=bytes(bank_hash).hex(),
        mask_a=mask_a,
        mask_b=mask_b,
        soft_dtype="float16" if enc == ENC_SOFT_F16 else "float32",
    )
    # §5 Sections
    skipped, last_id = [], -1
    while pos < end:
        _need(body, pos, SECTION_HEADER.size, "section header")
        sec_id, length = SECTION_HEADER.unpack_from(body, pos)
        pos += SECTION_HEADER.size
        _need(body, pos, length, f"section 0x{sec_id:02x}")
        if sec_id <= last_id:
            raise _Bad(f"section 0x{sec_id:02x} out of order or repeated")
        last_id = sec_id
        payload = body[pos : pos + length]
        if sec_id == SEC_LN:
            _read_ln(payload, profile)
        elif sec_id == SEC_HEAD:
            _read_head(payload, profile)
        elif sec_id == SEC_LABELS:
            _read_labels(payload, profile)
        elif sec_id == SEC_META:
            try:
                meta = json.loads(bytes(payload).decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise _Bad("meta section is not UTF-8 JSON") from None
            if not isinstance(meta, dict):
                raise _Bad("meta section is not a JSON object")
            profile.meta = meta
        elif sec_id < 0x80:
            raise _Bad(f"unknown critical section 0x{sec_id:02x} (written by a newer xpeft?)")
        else:
            skipped.append(sec_id)
        sizes[SECTION_NAMES.get(sec_id, f"section_0x{sec_id:02x}")] = SECTION_HEADER.size + length
        pos += length
    if profile.labels is not None and profile.head_weight is not None and profile.task == "classification":
        if len(profile.labels) != profile.head_weight.shape[0]:
            raise _Bad(f"{len(profile.labels)} labels for a head with {profile.head_weight.shape[0]} classes")
    sizes["checksum"] = CHECKSUM_SIZE
    return Decoded(profile, (major, minor), sizes, skipped)


def _read_ln(payload: memoryview, p: Profile) -> None:
    _need(payload, 0, 3, "ln section")
    code, b = struct.unpack_from("<BH", payload, 0)
    if code not in DTYPES or b == 0:
        raise _Bad("ln section: bad dtype or width")
    dt = DTYPES[code]
    if len(payload) != 3 + 2 * p.L * b * dt.itemsize:
        raise _Bad("ln section length does not match L×b")
    p.ln_weight = _floats(payload, 3, dt, p.L * b, "ln weight").reshape(p.L, b)
    p.ln_bias = _floats(payload, 3 + p.L * b * dt.itemsize, dt, p.L * b, "ln bias").reshape(p.L, b)
    p.param_dtype = "float16" if code == DTYPE_CODES["float16"] else "float32"


def _read_head(payload: memoryview, p: Profile) -> None:
    _need(payload, 0, 6, "head section")
    code, task, c, d = struct.unpack_from("<BBHH", payload, 0)
    if code not in DTYPES or task not in TASKS or c == 0 or d == 0:
        raise _Bad("head section: bad dtype, task or shape")
    if task == TASK_CODES["regression"] and c != 1:
        raise _Bad("regression head must have one output")
    dt = DTYPES[code]
    if len(payload) != 6 + (c * d + c) * dt.itemsize:
        raise _Bad("head section length does not match C×d")
    p.head_weight = _floats(payload, 6, dt, c * d, "head weight").reshape(c, d)
    p.head_bias = _floats(payload, 6 + c * d * dt.itemsize, dt, c, "head bias")
    p.param_dtype = "float16" if code == DTYPE_CODES["float16"] else "float32"
    p.task = TASKS[task]


def _read_labels(payload: memoryview, p: Profile) -> None:
    _need(payload, 0, 2, "labels section")
    (count,) = struct.unpack_from("<H", payload, 0)
    pos, labels = 2, []
    for i in range(count):
        _need(payload, pos, 1, f"label {i}")
        ln = payload[pos]
        if ln == 0:
            raise _Bad(f"label {i} is empty")
        _need(payload, pos + 1, ln, f"label {i}")
        try:
            labels.append(bytes(payload[pos + 1 : pos + 1 + ln]).decode("utf-8"))
        except UnicodeDecodeError:
            raise _Bad(f"label {i} is not UTF-8") from None
        pos += 1 + ln
    if pos != len(payload):
        raise _Bad("labels section has trailing bytes")
    if len(set(labels)) != len(labels):
        raise _Bad("labels are not unique")
    p.labels = labels


def read_xpm_full(path: str | os.PathLike) -> Decoded:
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: no such profile file") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is a directory, not a profile file")
    if not stat.S_ISREG(st.st_mode):  # /dev/zero would read without end, a FIFO would hang
        raise DataError(f"{path}: not a regular file (a device, pipe or socket is never read as a profile)")
    if st.st_size > MAX_FILE:
        raise IntegrityError(f"{path}: {st.st_size} bytes is larger than any .xpm may be ({MAX_FILE})")
    with open(path, "rb") as fh:  # bounded: a file that grew since stat() is still read only up to the limit
        data = fh.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise IntegrityError(f"{path}: larger than any .xpm may be ({MAX_FILE})")
    try:
        return _decode(memoryview(data))
    except _Bad as exc:
        raise IntegrityError(f"{path}: not a valid .xpm: {exc}") from None


def read_xpm(path: str | os.PathLike) -> Profile:
    return read_xpm_full(path).profile


def hard_mask_budget(n: int, L: int) -> int:
    """The size bound a masks-only hard profile meets: 2·L·⌈N/8⌉ + 64 (names up to 9 bytes)."""
    return 2 * L * math.ceil(n / 8) + 64
