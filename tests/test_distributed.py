"""Data-parallel fits (distributed.py, cli/launch.py): 2 CPU processes over gloo give 1 process's result.

The CLI runs are real subprocesses (`xpeft ... --devices 2 --device cpu`): the launcher starts
two workers, accelerate's PartialState joins them in a gloo group.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from xpeft_cli.distributed import World, deal, share
from xpeft_cli.errors import UsageError
from xpeft_cli.xpm import read_xpm

from helpers import sentiment_rows, write_jsonl

PROFILES = [("alice", 30), ("bob", 19), ("carol", 45), ("dan", 25)]


def test_deal_balances_rows_and_is_deterministic():
    work = {"a": 100, "b": 60, "c": 50, "d": 40, "e": 5}
    # largest first onto the least loaded rank: a→0, b→1, c→1, d→0, e→1; loads 140 / 115
    assert deal(work, 2) == [["a", "d"], ["b", "c", "e"]]
    assert deal(dict(reversed(list(work.items()))), 2) == [["d", "a"], ["e", "c", "b"]]  # data order kept
    assert deal({"x": 1, "y": 1, "z": 1}, 3) == [["x"], ["y"], ["z"]]
    with pytest.raises(UsageError, match="3 processes for 2 profiles"):
        deal({"x": 1, "y": 2}, 3)


def test_share_covers_the_batch_and_weights_sum_to_one():
    rows = list(range(7))
    parts = [share(rows, World(3, r)) for r in range(3)]
    assert sorted(i for p, _ in parts for i in p) == rows
    assert sum(wt for _, wt in parts) == pytest.approx(1.0)
    # a rank without rows runs one row at weight 0: the same noise draws and collectives as the others
    assert share([4], World(2, 1)) == ([4], 0.0)


def test_single_process_world_sums_nothing():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    extra = torch.tensor(5.0)
    assert World(1, 0, torch.device("cpu")).sum_grads_([p], extra) is extra
    assert torch.equal(p.grad, torch.full((3,), 2.0))


@pytest.fixture(scope="module")
def dp(tmp_path_factory, tiny_bert_nodrop):
    """A folder with a bank, a 4-profile file, one profile's file, and a runner for `xpeft` subprocesses."""
    root = tmp_path_factory.mktemp("dp")
    rows = []
    for i, (name, n) in enumerate(PROFILES):
        rows += [dict(r, profile=name) for r in sentiment_rows(n, seed=i)]
    random.Random(0).shuffle(rows)
    write_jsonl(root / "multi.jsonl", rows)
    write_jsonl(root / "alice.jsonl", sentiment_rows(50, 0))
    env = dict(os.environ, XPEFT_MODEL=str(tiny_bert_nodrop), OMP_NUM_THREADS="1")
    env.pop("XPEFT_BANK", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "xpeft_cli", *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
        )

    assert run("bank", "create", "--random", "-n", "12", "-q").returncode == 0
    return root, run


FIT = ("--k", "4", "--epochs", "3", "--batch-size", "8", "--device", "cpu", "-q")


def test_multi_profile_fit_on_two_processes_equals_one(dp):
    root, run = dp
    for out, devices in (("one", "1"), ("two", "2")):
        r = run(
            "fit",
            "--data",
            "multi.jsonl",
            "--profile-column",
            "profile",
            *FIT,
            "-o",
            out,
            "--devices",
            devices,
            "--json",
        )
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)  # one JSON object from rank 0 only
        assert res["profiles"] == 4 and res["steps"] == 18
    for name, _ in PROFILES:
        a, b = read_xpm(root / "one" / f"{name}.xpm"), read_xpm(root / "two" / f"{name}.xpm")
        assert np.array_equal(a.mask_a, b.mask_a) and np.array_equal(a.mask_b, b.mask_b)
        np.testing.assert_allclose(a.ln_weight, b.ln_weight, atol=1e-6)
        np.testing.assert_allclose(a.head_weight, b.head_weight, atol=1e-6)
        assert a.meta == b.meta  # incl. one_run_of = 4: the run is one run, whatever the processes
    one = [json.loads(l) for l in (root / "one" / "fit.jsonl").read_text().splitlines()]
    two = [json.loads(l) for l in (root / "two" / "fit.jsonl").read_text().splitlines()]
    assert [r["per_profile"].keys() for r in one] == [r["per_profile"].keys() for r in two]
    assert [r["loss"] for r in one] == pytest.approx([r["loss"] for r in two], abs=1e-5)


@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_single_profile_fit_splits_batches(dp, mask):
    root, run = dp
    for out, devices in ((f"a1{mask}.xpm", "1"), (f"a2{mask}.xpm", "2")):
        r = run("fit", "-p", "alice", "--data", "alice.jsonl", "--mask", mask, *FIT, "-o", out, "--devices", devices)
        assert r.returncode == 0, r.stderr
    a, b = read_xpm(root / f"a1{mask}.xpm"), read_xpm(root / f"a2{mask}.xpm")
    if mask == "hard":
        assert np.array_equal(a.mask_a, b.mask_a) and np.array_equal(a.mask_b, b.mask_b)
    else:
        np.testing.assert_allclose(a.mask_a, b.mask_a, atol=1e-5)
        assert np.abs(a.mask_a).max() > 1e-3  # the masks moved, so the comparison means something
    np.testing.assert_allclose(a.head_weight, b.head_weight, atol=1e-5)
    la = [json.loads(l)["loss"] for l in (root / f"a1{mask}.fit.jsonl").read_text().splitlines() if '"loss"' in l]
    lb = [json.loads(l)["loss"] for l in (root / f"a2{mask}.fit.jsonl").read_text().splitlines() if '"loss"' in l]
    assert len(la) == 18 and la == pytest.approx(lb, abs=1e-5)  # the whole batch's loss, summed over ranks


def test_mtl_bank_on_two_processes_sums_the_shared_head(dp):
    from xpeft_cli.bank import Bank

    root, run = dp
    for out, devices in (("mtl1", "1"), ("mtl2", "2")):
        r = run(
            "bank",
            "create",
            "--from-profiles",
            "multi.jsonl",
            "--profile-count",
            "3",
            "--method",
            "mtl",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "-o",
            out,
            "-q",
            "--devices",
            devices,
        )
        assert r.returncode == 0, r.stderr
    a, b = Bank.load(root / "mtl1"), Bank.load(root / "mtl2")
    for x, y in zip(a.A + a.B, b.A + b.B):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)
    assert float(a.head.weight.abs().max()) > 0
    torch.testing.assert_close(a.head.weight, b.head.weight, atol=1e-6, rtol=0)
    assert a.origin["profiles"] == b.origin["profiles"]


def test_data_parallel_errors_are_one_line_with_exit_codes(dp):
    root, run = dp
    (root / "bad.jsonl").write_text('{"text": "x", "label": "a", "profile": "p"}\n{"text": "y", "label": "b"}\n')
    cases = [
        (
            ("fit", "--data", "bad.jsonl", "--profile-column", "profile", "--devices", "2", "--device", "cpu"),
            3,
            "row 2",
        ),
        (
            ("fit", "--data", "multi.jsonl", "--profile-column", "profile", "--devices", "5", "--device", "cpu", "-q"),
            2,
            "5 processes for 4 profiles",
        ),
        (("bank", "create", "--random", "-n", "4", "-o", "b4", "--devices", "2"), 2, "--from-profiles"),
        (("fit", "-p", "x", "--data", "alice.jsonl", "--devices", "0"), 2, "greater than or equal to 1"),
        (("fit", "-p", "x", "--data", "alice.jsonl", "--devices", "2", "--device", "cuda:1"), 2, "--device"),
    ]
    for args, code, text in cases:
        r = run(*args)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert r.returncode == code, (args, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("xpeft: error:") and text in lines[0], r.stderr
