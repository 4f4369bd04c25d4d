"""The .xpm format: round trips, size bound, bit order, and refusal of damaged or forged files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from xpeft_cli.errors import IntegrityError
from xpeft_cli.profile import Profile
from xpeft_cli.xpm import HEADER, MAGIC, decode, encode, hard_mask_budget, read_xpm_full, write_xpm

HASH = "ab" * 32


def hard_profile(n=100, L=12, k=50, seed=0, name="alice", extras=True) -> Profile:
    rng = np.random.default_rng(seed)

    def rows():
        m = np.zeros((L, n), dtype=bool)
        for r in m:
            r[rng.choice(n, k, replace=False)] = True
        return m

    p = Profile(name=name, mask_kind="hard", n=n, L=L, k=k, bank_hash=HASH, mask_a=rows(), mask_b=rows())
    if extras:
        p.ln_weight = rng.standard_normal((L, 48)).astype(np.float32)
        p.ln_bias = rng.standard_normal((L, 48)).astype(np.float32)
        p.head_weight = rng.standard_normal((3, 64)).astype(np.float32)
        p.head_bias = rng.standard_normal(3).astype(np.float32)
        p.labels = ["food", "sports", "technology"]
        p.meta = {"fit": {"seed": 0}}
    return p


def test_hard_round_trip_exact():
    p = hard_profile()
    q = decode(encode(p)).profile
    for f in ("name", "mask_kind", "n", "L", "k", "bank_hash", "labels", "task", "meta"):
        assert getattr(q, f) == getattr(p, f)
    for f in ("mask_a", "mask_b", "ln_weight", "ln_bias", "head_weight", "head_bias"):
        assert np.array_equal(getattr(q, f), getattr(p, f))
    assert encode(q) == encode(p)  # canonical: re-encoding gives the same bytes


def test_float16_sections_halve_ln_and_head_and_round_trip():
    p = hard_profile()
    full = decode(encode(p))
    p.param_dtype = "float16"
    blob = encode(p)
    half = decode(blob)
    assert half.sizes["ln"] - 3 - 5 == (full.sizes["ln"] - 3 - 5) // 2  # payload dtype byte + width, section header
    assert half.sizes["head"] - 6 - 5 == (full.sizes["head"] - 6 - 5) // 2
    q = half.profile
    assert q.param_dtype == "float16" and encode(q) == blob  # canonical in float16 too
    np.testing.assert_array_equal(q.ln_weight, p.ln_weight.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(q.head_weight, p.head_weight.astype(np.float16).astype(np.float32))


def test_soft_round_trip_float32_and_float16():
    p = hard_profile(extras=False)
    rng = np.random.default_rng(1)
    p.mask_kind, p.k = "soft", 0
    p.mask_a = rng.standard_normal((12, 100)).astype(np.float32)
    p.mask_b = rng.standard_normal((12, 100)).astype(np.float32)
    q = decode(encode(p)).profile
    assert np.array_equal(q.mask_a, p.mask_a) and q.soft_dtype == "float32"
    assert decode(encode(p)).sizes["masks"] == 2 * 100 * 12 * 4  # Table 1's 2·N·L·4
    p.soft_dtype = "float16"
    q = decode(encode(p)).profile
    np.testing.assert_allclose(q.mask_a, p.mask_a, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("n,L", [(100, 12), (200, 12), (400, 12), (400, 6), (7, 1), (65535, 2)])
def test_masks_only_hard_profile_meets_the_size_bound(n, L):
    p = hard_profile(n=n, L=L, k=min(50, n), extras=False)
    data = encode(p)
    assert len(data) <= hard_mask_budget(n, L) == 2 * L * ((n + 7) // 8) + 64
    assert decode(data).sizes["masks"] == 2 * L * ((n + 7) // 8)


def test_bit_order_worked_example():
    # N=10, L=1, k=2: M_A selects adapters 0 and 9, M_B selects 1 and 8 → MSB-first rows, zero padding
    a = np.zeros((1, 10), bool)
    a[0, [0, 9]] = True
    b = np.zeros((1, 10), bool)
    b[0, [1, 8]] = True
    p = Profile(name="x", mask_kind="hard", n=10, L=1, k=2, bank_hash=HASH, mask_a=a, mask_b=b)
    data = encode(p)
    masks = data[HEADER.size + 1 : HEADER.size + 1 + 4]
    assert masks == bytes([0b10000000, 0b01000000, 0b01000000, 0b10000000])
    assert data[:8] == MAGIC == b"\x89XPM\r\n\x1a\n"
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_every_truncation_is_refused():
    data = encode(hard_profile(n=40, L=2, k=5))
    for cut in range(len(data)):
        with pytest.raises(IntegrityError):
            decode(data[:cut])


def test_every_single_bit_flip_is_refused():
    data = encode(hard_profile(n=16, L=1, k=3, extras=False))
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(IntegrityError):
                decode(bytes(bad))


def _resign(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_forged_fields_with_valid_checksum_are_refused():
    good = encode(hard_profile(n=16, L=2, k=3))[:-4]
    forgeries = {
        "major": good[:8] + bytes([2]) + good[9:],
        "huge N": good[:12] + struct.pack("<H", 65535) + good[14:],
        "k > N": good[:16] + struct.pack("<H", 17) + good[18:],
        "name length": good[:50] + bytes([255]) + good[51:],
        "reserved": good[:11] + b"\x01" + good[12:],
        "section length": good + struct.pack("<BI", 0x81, 2**31),
        "unknown critical": good + struct.pack("<BI", 0x42, 0),
        "trailing garbage": good + b"\x00",
    }
    for what, body in forgeries.items():
        with pytest.raises(IntegrityError):
            decode(_resign(body))


def test_unknown_ancillary_section_is_skipped():
    good = encode(hard_profile(n=16, L=2, k=3))[:-4]
    dec = decode(_resign(good + struct.pack("<BI", 0xF0, 3) + b"xyz"))
    assert dec.skipped_sections == [0xF0]


def test_text_mode_damage_is_named(tmp_path):
    data = encode(hard_profile(extras=False))
    damaged = data.replace(b"\r\n", b"\n", 1)
    with pytest.raises(IntegrityError, match="text mode"):
        decode(damaged[:1] + b"XPM" + damaged[4:])


def test_write_is_atomic_and_readable(tmp_path):
    p = hard_profile()
    path = tmp_path / "alice.xpm"
    n = write_xpm(p, path)
    assert path.stat().st_size == n and not list(tmp_path.glob(".*tmp"))
    dec = read_xpm_full(path)
    assert sum(dec.sizes.values()) == n


def test_the_writer_refuses_what_the_reader_would_refuse():
    """One validation for both: encode() reads its own bytes back, so no written file is refused later."""
    from xpeft_cli.errors import DataError

    p = hard_profile(k=3)
    p.mask_a[0, :16] = True  # 16 bits set where the header says k = 3
    with pytest.raises(DataError, match="adapters selected, header says k=3"):
        encode(p)
    q = hard_profile()
    q.labels = [f"l{i}" for i in range(70_000)]  # more labels than the u16 count holds
    with pytest.raises(DataError, match="at most 65535"):
        encode(q)
    r = hard_profile()
    r.head_weight[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        encode(r)
    for kind in ("hard", "soft"):  # and every well-formed kind writes and reads back
        s = hard_profile()
        if kind == "soft":
            s.mask_kind, s.k = "soft", 0
            s.mask_a = s.mask_a.astype(np.float32)
            s.mask_b = s.mask_b.astype(np.float32)
        for dt in ("float32", "float16"):
            s.param_dtype = dt
            assert encode(decode(encode(s)).profile) == encode(s)


def test_devices_and_pipes_are_refused_without_reading(tmp_path):
    """`inspect /dev/zero` would read without end and a FIFO would hang: only regular files are read."""
    import os

    from xpeft_cli.errors import DataError

    with pytest.raises(DataError, match="not a regular file"):
        read_xpm_full("/dev/zero")
    fifo = tmp_path / "pipe.xpm"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        read_xpm_full(fifo)
    with pytest.raises(DataError, match="is a directory"):
        read_xpm_full(tmp_path)


def test_describing_a_large_hard_profile_keeps_bits_as_bits():
    """N = 65,535, L = 128, k = 32,768: a 2 MB file. Describing it (inspect --json, GET /v1/profiles)
    lists no 8 million indices; it says how to get the masks as arrays."""
    import json

    from xpeft_cli.describe import describe_decoded

    n, L, k = 65535, 128, 32768
    m = np.zeros((L, n), dtype=bool)
    m[:, :k] = True
    p = Profile(name="big", mask_kind="hard", n=n, L=L, k=k, bank_hash=HASH, mask_a=m, mask_b=m)
    info = describe_decoded(decode(encode(p)))
    assert info["selected"] is None and "unpack --npy" in info["selected_omitted"]
    assert len(json.dumps(info)) < 2000
    small = describe_decoded(decode(encode(hard_profile())))
    assert len(small["selected"]) == 12 and len(small["selected"][0]["A"]) == 50
