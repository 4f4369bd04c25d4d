"""Profile stores and the pack / unpack / verify commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_xpm import hard_profile

from xpeft_cli.errors import DataError, IntegrityError
from xpeft_cli.store import ENTRY, HEADER, Store, write_store
from xpeft_cli.xpm import encode, read_xpm


def _many(count: int):
    return [hard_profile(n=24, L=2, k=3, seed=i, name=f"user{i:05d}", extras=False) for i in range(count)]


def test_store_round_trip_and_lookup(tmp_path):
    profiles = _many(300)
    size = write_store(profiles, tmp_path / "s.xps")
    with Store(tmp_path / "s.xps") as s:
        assert len(s) == 300
        for i in (0, 17, 299):
            got = s.get(f"user{i:05d}")
            assert encode(got) == encode(profiles[i])
        with pytest.raises(DataError, match="no profile named"):
            s.get("nobody")
        assert [p.name for p in s] == [p.name for p in profiles]
    per_profile = (size - HEADER.size - 4) / 300
    # buckets are the power of two ≥ 2·count, so the index costs 48 to 96 bytes a profile
    assert per_profile <= len(encode(profiles[0])) + 4 * ENTRY.size


def test_lookup_reads_a_constant_number_of_bytes(tmp_path, monkeypatch):
    write_store(_many(2000), tmp_path / "s.xps")
    with Store(tmp_path / "s.xps") as s:
        reads = []
        real_read = s._fh.read
        monkeypatch.setattr(s._fh, "read", lambda n=-1: reads.append(n) or real_read(n), raising=False)
        for i in range(0, 2000, 97):
            reads.clear()
            s.get(f"user{i:05d}")
            assert len(reads) <= 12 and all(0 <= n < 1000 for n in reads)


def test_duplicate_names_are_refused(tmp_path):
    p = _many(1)[0]
    with pytest.raises(DataError, match="unique"):
        write_store([p, p], tmp_path / "s.xps")


def test_damaged_store_is_refused(tmp_path):
    write_store(_many(20), tmp_path / "s.xps")
    data = (tmp_path / "s.xps").read_bytes()
    for cut in (0, 10, 31, 200, len(data) - 1):
        (tmp_path / "cut.xps").write_bytes(data[:cut])
        with pytest.raises(IntegrityError):
            list(Store(tmp_path / "cut.xps"))
    flipped = bytearray(data)
    flipped[HEADER.size + 60] ^= 0x10  # inside the first record
    (tmp_path / "flip.xps").write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError, match="record"):
        list(Store(tmp_path / "flip.xps"))


def test_pack_unpack_verify_cli(cli, fitted, tmp_path):
    # soft → hard with --k
    code, _, err = cli("fit", "-p", "sofia", "-d", "alice.jsonl", "--epochs", "1", "--mask", "soft", "--quiet")
    assert code == 0, err
    code, out, _ = cli("pack", "sofia.xpm", "-o", "sofia-hard.xpm", "--k", "5", "--json")
    assert code == 0 and json.loads(out)["profiles"] == 1
    hard, soft = read_xpm(tmp_path / "sofia-hard.xpm"), read_xpm(tmp_path / "sofia.xpm")
    assert hard.mask_kind == "hard" and hard.k == 5
    assert all(
        set(np.argsort(-soft.mask_a[l], kind="stable")[:5]) == set(np.flatnonzero(hard.mask_a[l]))
        for l in range(hard.L)
    )
    assert np.array_equal(hard.head_weight, soft.head_weight)
    # many → one store; lookups; unpack
    code, _, err = cli("pack", "alice.xpm", "sofia-hard.xpm", "sofia.xpm", "-o", "all.xps")
    assert code == 3 and "named 'sofia'" in err and not (tmp_path / "all.xps").exists()
    code, out, _ = cli("pack", "alice.xpm", "sofia-hard.xpm", "-o", "all.xps", "--json")
    assert code == 0 and json.loads(out)["profiles"] == 2
    code, out, _ = cli("unpack", "all.xps", "--name", "alice")
    doc = json.loads(out)
    assert code == 0 and doc["profiles"][0]["name"] == "alice" and len(doc["profiles"][0]["masks"]["A"][0]) == 4
    code, _, _ = cli("unpack", "alice.xpm", "--npy", "npy")
    assert code == 0 and np.load(tmp_path / "npy" / "alice.mask_a.npy").sum() == 4 * 4  # L=4 sites, k=4
    # masks-only
    code, _, _ = cli("pack", "alice.xpm", "-o", "alice-masks.xpm", "--masks-only")
    assert code == 0 and (tmp_path / "alice-masks.xpm").stat().st_size == 51 + 5 + 2 * 4 * 2 + 4
    # verify: all good, then one damaged and one of another bank
    code, out, _ = cli("verify", "alice.xpm", "all.xps", "--bank", "bank", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    data = (tmp_path / "alice.xpm").read_bytes()
    (tmp_path / "broken.xpm").write_bytes(data[:-3])
    assert cli("bank", "create", "--random", "-n", "16", "--seed", "9", "-o", "bank9")[0] == 0
    code, out, err = cli("verify", "alice.xpm", "broken.xpm", "all.xps", "--bank", "bank9", "--json")
    res = json.loads(out)
    assert code == 4 and res["failed"] == 3 and "failed verification" in err
    code, out, err = cli("verify", "alice.xpm", "broken.xpm", "--bank", "bank")
    assert code == 4 and "ok    alice.xpm" in out and "FAIL  broken.xpm" in out


def test_force_uses_a_profile_of_another_bank_loudly(cli, fitted):
    assert cli("bank", "create", "--random", "-n", "16", "--seed", "5", "-o", "bank5")[0] == 0
    code, _, err = cli("eval", "-p", "alice.xpm", "-d", "alice_test.jsonl", "--bank", "bank5")
    assert code == 4 and "--force" in err
    code, out, err = cli("eval", "-p", "alice.xpm", "-d", "alice_test.jsonl", "--bank", "bank5", "--force", "--json")
    assert code == 0 and "WARNING" in err and json.loads(out)["metrics"]["n"] == 12
