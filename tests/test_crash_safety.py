"""Crash safety: SIGKILL during writes and fits never leaves a partial file or loses work."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import sentiment_rows, write_jsonl

WRITER = r"""
import sys
from xpeft_cli.atomic import atomic_write_bytes
dest, n = sys.argv[1], 0
while True:
    n += 1
    body = (b"%08d" % n) * 250_000            # 2 MB, every byte tells which version it belongs to
    atomic_write_bytes(dest, body)
"""


def _complete(data: bytes) -> bool:
    return len(data) == 2_000_000 and data == data[:8] * 250_000


def test_sigkill_during_atomic_writes(tmp_path):
    dest = tmp_path / "profile.xpm"
    dest.write_bytes(b"%08d" % 0 * 250_000)
    rng = random.Random(0)
    for trial in range(25):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dest)])
        time.sleep(0.3 + rng.random() * 0.4)  # interpreter start-up, then some writes in flight
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _complete(dest.read_bytes()), f"trial {trial}: destination is partial"
    # left-over temp files are the only trace of a kill; they never replace the destination
    assert all(p.name.startswith(".profile.xpm.") for p in tmp_path.iterdir() if p != dest)


def _fit(cwd: Path, env: dict, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "xpeft_cli",
        "fit",
        "-p",
        "carol",
        "-d",
        "train.jsonl",
        "--epochs",
        "40",
        "--batch-size",
        "4",
        "--mask",
        "hard",
        "--k",
        "4",
        "--seed",
        "3",
        "--quiet",
        *extra,
    ]
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_fit_killed_and_resumed_gives_identical_profile(tmp_path, tiny_bert):
    env = dict(os.environ, XPEFT_MODEL=str(tiny_bert))
    write_jsonl(tmp_path / "train.jsonl", sentiment_rows(40))
    subprocess.run(
        [sys.executable, "-m", "xpeft_cli", "bank", "create", "--random", "-n", "16"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    (ref_dir / "bank").symlink_to(tmp_path / "bank")
    (ref_dir / "train.jsonl").symlink_to(tmp_path / "train.jsonl")
    assert _fit(ref_dir, env).wait() == 0
    reference = (ref_dir / "carol.xpm").read_bytes()

    ckpt = tmp_path / "carol.ckpt.safetensors"
    proc = _fit(tmp_path, env, "--checkpoint-every", "7")
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # let it run past the first checkpoint
    assert proc.poll() is None, "the fit ended before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "carol.xpm").exists() and ckpt.exists()
    # the interrupted fit's checkpoint can be packed into a usable profile as it stood
    packed = subprocess.run(
        [sys.executable, "-m", "xpeft_cli", "pack", str(ckpt), "-o", "partial.xpm", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert packed.returncode == 0, packed.stderr
    from xpeft_cli import read_xpm

    partial = read_xpm(tmp_path / "partial.xpm")
    assert partial.name == "carol" and partial.mask_kind == "hard" and partial.k == 4
    assert partial.labels == ["neg", "pos"] and partial.meta["packed_from"]["checkpoint_step"] >= 7
    resumed = _fit(tmp_path, env, "--checkpoint-every", "7", "--resume")
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    assert (tmp_path / "carol.xpm").read_bytes() == reference
    assert not ckpt.exists()
    log = (tmp_path / "carol.fit.jsonl").read_text().splitlines()
    assert log == (ref_dir / "carol.fit.jsonl").read_text().splitlines()


def test_resume_refuses_other_options(tmp_path, tiny_bert):
    env = dict(os.environ, XPEFT_MODEL=str(tiny_bert))
    write_jsonl(tmp_path / "train.jsonl", sentiment_rows(40))
    subprocess.run(
        [sys.executable, "-m", "xpeft_cli", "bank", "create", "--random", "-n", "16"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    no_ckpt = _fit(tmp_path, env, "--resume")
    assert no_ckpt.wait() == 2 and b"no checkpoint" in no_ckpt.stderr.read()


def _xpm_files(folder: Path, count: int, n: int = 2000) -> list[Path]:
    """Hard profiles written as .xpm files (no model needed: masks, LN and head of a fixed shape)."""
    import numpy as np

    from xpeft_cli.profile import Profile
    from xpeft_cli.xpm import write_xpm

    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        rows = np.zeros((12, n), dtype=bool)
        for r in rows:
            r[rng.choice(n, 50, replace=False)] = True
        p = Profile(name=f"p{i}", mask_kind="hard", n=n, L=12, k=50, bank_hash="ab" * 32, mask_a=rows, mask_b=rows)
        paths.append(folder / f"p{i}.xpm")
        write_xpm(p, paths[-1])
    return paths


def _pack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xpeft_cli", "pack", *args, "-q"], capture_output=True, text=True)


def _names(store: Path) -> set[str]:
    from xpeft_cli.store import Store

    with Store(store) as s:
        return {p.name for p in s}


def test_two_packs_adding_to_one_store_lose_nothing(tmp_path):
    """Two processes each add profiles to one store, one `pack STORE NEW -o STORE` at a time, at once:
    the store's lock (atomic.locked) orders the read-modify-writes, so every profile is kept."""
    from concurrent.futures import ThreadPoolExecutor

    files = _xpm_files(tmp_path, 9)
    store = tmp_path / "all.xps"
    assert _pack(str(files[0]), "-o", str(store)).returncode == 0

    def add(batch: list[Path]) -> list[int]:
        return [_pack(str(store), str(f), "-o", str(store)).returncode for f in batch]

    with ThreadPoolExecutor(2) as pool:
        codes = list(pool.map(add, [files[1:9:2], files[2:9:2]]))
    assert codes == [[0] * 4, [0] * 4]
    assert _names(store) == {f"p{i}" for i in range(9)}


def test_pack_killed_keeps_the_old_store(tmp_path):
    """SIGKILL at random moments of `pack` into an existing store: the store is always the old one or
    the new one, complete (its checksums verify), never a torn file."""
    files = _xpm_files(tmp_path, 40)
    store = tmp_path / "s.xps"
    assert _pack(*map(str, files[:20]), "-o", str(store)).returncode == 0
    old = store.read_bytes()
    rng = random.Random(1)
    for trial in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "xpeft_cli", "pack", *map(str, files), "-o", str(store), "-q"])
        time.sleep(0.4 + rng.random() * 0.8)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        names = _names(store)  # reading checks every index entry and record
        assert names in ({f"p{i}" for i in range(20)}, {f"p{i}" for i in range(40)}), trial
        if len(names) == 20:
            assert store.read_bytes() == old


def test_checkpoint_is_checksummed_and_its_position_range_checked(tiny_bert, tmp_path):
    """A flipped bit anywhere in a checkpoint is refused (never resumed into another profile), and a
    position outside the fit (epoch -3) is refused even with a recomputed checksum."""
    import json as _json

    import pytest
    from safetensors.torch import load_file, save_file

    from xpeft_cli import checkpoint as ckpt
    from xpeft_cli.config import FitConfig
    from xpeft_cli.data import Examples
    from xpeft_cli.errors import IntegrityError
    from xpeft_cli.train import fit_profile

    from helpers import make_bank

    bank = make_bank(tiny_bert, tmp_path / "bank", n=8)
    rows = sentiment_rows(24, 0)
    ex = Examples([r["text"] for r in rows], None, [r["label"] for r in rows], "t")
    cfg = FitConfig(epochs=2, batch_size=8, device="cpu", val_fraction=0)
    path = tmp_path / "a.ckpt.safetensors"
    whole = fit_profile(bank, ex, "a", cfg, checkpoint_path=path, checkpoint_every=2)
    good = path.read_bytes()
    from xpeft_cli.xpm import encode

    resumed = fit_profile(bank, ex, "a", cfg, checkpoint_path=path, checkpoint_every=2, resume=True)
    assert encode(resumed.profile) == encode(whole.profile)

    flipped = bytearray(good)
    flipped[-100] ^= 0x04  # inside the tensor data
    path.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError, match="checksum"):
        fit_profile(bank, ex, "a", cfg, checkpoint_path=path, checkpoint_every=2, resume=True)
    with pytest.raises(IntegrityError, match="checksum"):
        ckpt.profile_from_checkpoint(path)

    path.write_bytes(good)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    meta["position"] = _json.dumps({"epoch": -3, "batch": 0, "step": 0})
    meta["checksum"] = ckpt.checksum(meta, tensors)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(IntegrityError, match="position"):
        fit_profile(bank, ex, "a", cfg, checkpoint_path=path, checkpoint_every=2, resume=True)


def test_bank_replacement_killed_leaves_a_loadable_bank(tmp_path, tiny_bert):
    """`bank create --materialize --force` killed at random moments: the folder always loads, as the
    old bank or the new one (tensors are named by content and the manifest switches last)."""
    from xpeft_cli.bank import Bank

    env = dict(os.environ, XPEFT_MODEL=str(tiny_bert))
    env.pop("XPEFT_BANK", None)
    make = [
        sys.executable,
        "-m",
        "xpeft_cli",
        "bank",
        "create",
        "--random",
        "-n",
        "2000",
        "--materialize",
        "-o",
        "b",
        "-q",
    ]
    assert subprocess.run(make, cwd=tmp_path, env=env).returncode == 0
    Bank.load(tmp_path / "b")
    rng = random.Random(2)
    for trial in range(6):
        proc = subprocess.Popen(make + ["--force", "--seed", str(trial + 1)], cwd=tmp_path, env=env)
        time.sleep(1.0 + rng.random() * 2.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        Bank.load(tmp_path / "b")  # never a manifest without its tensors (IntegrityError otherwise)
        assert len(list((tmp_path / "b").glob("adapters-*.safetensors"))) <= 2


def test_multi_profile_fit_killed_leaves_every_file_whole(tmp_path, tiny_bert):
    """A `--profile-column` fit writing into a folder of existing profiles, killed at random moments:
    every .xpm there is complete (old or new), never torn."""
    from xpeft_cli.xpm import read_xpm

    env = dict(os.environ, XPEFT_MODEL=str(tiny_bert))
    env.pop("XPEFT_BANK", None)
    rows = [dict(r, who=f"u{i % 6}") for i, r in enumerate(sentiment_rows(120, 0))]
    write_jsonl(tmp_path / "many.jsonl", rows)
    assert (
        subprocess.run(
            [sys.executable, "-m", "xpeft_cli", "bank", "create", "--random", "-n", "64", "-q"], cwd=tmp_path, env=env
        ).returncode
        == 0
    )
    fit = [
        sys.executable,
        "-m",
        "xpeft_cli",
        "fit",
        "--profile-column",
        "who",
        "-d",
        "many.jsonl",
        "-o",
        "out",
        "--epochs",
        "1",
        "-q",
    ]
    assert subprocess.run(fit, cwd=tmp_path, env=env).returncode == 0
    rng = random.Random(3)
    for trial in range(5):
        proc = subprocess.Popen(fit + ["--seed", str(trial + 1)], cwd=tmp_path, env=env)
        time.sleep(2.0 + rng.random() * 4.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        names = sorted(p.name for p in (tmp_path / "out").glob("*.xpm"))
        assert len(names) == 6, names
        for p in (tmp_path / "out").glob("*.xpm"):
            read_xpm(p)  # complete: checksum and every section verify
