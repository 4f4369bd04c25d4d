"""Many profiles in one run (routing.py, multifit.py): same result as lone fits, per-row routing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from xpeft_cli.data import Examples
from xpeft_cli.multifit import fit_profiles, profile_filename
from xpeft_cli.train import FitConfig, fit_profile

from helpers import make_bank, sentiment_rows

SIZES = [("alice", 30), ("bob", 19), ("carol", 45)]


def _multi_examples() -> Examples:
    rows = []
    for pi, (name, n) in enumerate(SIZES):
        rows += [dict(r, profile=name) for r in sentiment_rows(n, seed=pi)]
    random.Random(0).shuffle(rows)
    return Examples([r["text"] for r in rows], None, [r["label"] for r in rows], "multi", [r["profile"] for r in rows])


@pytest.fixture(scope="module")
def nodrop_bank(tiny_bert_nodrop, tmp_path_factory):
    return make_bank(tiny_bert_nodrop, tmp_path_factory.mktemp("bank"), n=12)


@pytest.mark.parametrize(
    "method,mask,knobs",
    [
        ("x-peft", "hard", {}),
        ("x-peft", "soft", {}),
        ("x-peft", "sign", {}),
        ("single-adapter", "hard", {}),
        ("head-only", "hard", {}),
        ("x-peft", "sign", {"warmup": 0.2, "mask_clip": 0.02, "lr_masks": 0.2}),
    ],
)
def test_one_run_equals_lone_fits(nodrop_bank, method, mask, knobs):
    """Profiles of unequal size (so they drop out of the run at different steps) in one run; the
    schedule's warm-up and the clamped sign logits come from the same core (loop.py) in both."""
    ex = _multi_examples()
    cfg = FitConfig(method=method, mask=mask, k=4, epochs=3, batch_size=8, device="cpu", labels=["neg", "pos"], **knobs)
    joint = fit_profiles(nodrop_bank, ex, cfg)
    assert joint.names == [n for n, _ in SIZES] or sorted(joint.names) == sorted(n for n, _ in SIZES)
    assert joint.steps == max(-(-(n - round(n * 0.1)) // 8) * 3 for _, n in SIZES)
    for name, idx in ex.by_profile().items():
        solo = fit_profile(nodrop_bank, ex.subset(idx), name, cfg)
        a, b = solo.profile, joint.profiles[name]
        if method == "x-peft":
            if mask in ("hard", "sign"):
                assert np.array_equal(a.mask_a, b.mask_a) and np.array_equal(a.mask_b, b.mask_b)
                if mask == "hard":
                    assert a.mask_a.sum() == 4 * a.L
                else:  # signs of both kinds were learned
                    assert 0 < a.mask_b.sum() < a.mask_b.size
            else:
                np.testing.assert_allclose(a.mask_a, b.mask_a, atol=1e-5)
                assert np.abs(a.mask_a).max() > 1e-3  # the masks moved
            np.testing.assert_allclose(a.ln_weight, b.ln_weight, atol=1e-5)
            np.testing.assert_allclose(a.head_weight, b.head_weight, atol=1e-5)
            assert b.meta["fit"]["one_run_of"] == 3
        else:
            assert a.tensors.keys() == b.tensors.keys()
            for key in a.tensors:
                torch.testing.assert_close(a.tensors[key], b.tensors[key], atol=1e-5, rtol=0)
        assert solo.val_metrics["accuracy"] == pytest.approx(joint.val_metrics[name]["accuracy"])


def test_routed_rows_use_their_own_profile(nodrop_bank):
    """A mixed batch gives each row what a one-profile batch of that profile gives it."""
    ex = _multi_examples()
    cfg = FitConfig(k=4, epochs=2, batch_size=8, device="cpu", labels=["neg", "pos"], val_fraction=0)
    res = fit_profiles(nodrop_bank, ex, cfg)
    model, tok = res.model.eval(), res.tokenizer
    enc = tok(ex.texts[:12], padding=True, return_tensors="pt")
    pid = torch.tensor([i % 3 for i in range(12)])
    with torch.no_grad():
        mixed = model(**enc, profile_ids=pid)
        for p in range(3):
            rows = (pid == p).nonzero().flatten()
            alone = model(**{k: v[rows] for k, v in enc.items()}, profile_ids=torch.full((len(rows),), p))
            torch.testing.assert_close(mixed[rows], alone, atol=1e-5, rtol=1e-5)
    # the profiles differ, so routing matters
    assert not torch.allclose(mixed[0:1], model(**{k: v[0:1] for k, v in enc.items()}, profile_ids=torch.tensor([1])))


def test_profile_filename_is_safe_and_distinct():
    assert profile_filename("alice") == "alice"
    a, b = profile_filename("Lee Moran, Contributor"), profile_filename("Lee Moran / Contributor")
    assert a != b and all(c.isalnum() or c in "._-" for c in a + b)
    assert profile_filename("../../etc") not in ("..", "") and "/" not in profile_filename("../../etc")


@pytest.mark.parametrize("cache_gb", [0.0, 4.0])
@pytest.mark.parametrize("masks", [["hard"], ["soft"], ["sign"], ["hard", "soft", "sign"]])
def test_server_rows_match_each_profiles_own_model(nodrop_bank, masks, cache_gb):
    """The serving route (per-row Â, B̂ with the LN affine folded into B̂; mixed per batch, or
    precomputed for every profile) gives what each profile's own XPeftModel gives, in a mixed
    batch and in a batch of one profile."""
    from dataclasses import replace

    from xpeft_cli.evaluate import model_for_profile
    from xpeft_cli.serve import ProfileServer

    ex = _multi_examples()
    rng = np.random.default_rng(0)  # an LN affine far from the identity, so that folding it matters
    profiles = []
    for mask in masks:
        cfg = FitConfig(mask=mask, k=4, epochs=1, batch_size=8, device="cpu", labels=["neg", "pos"], val_fraction=0)
        res = fit_profiles(nodrop_bank, ex, cfg)
        profiles += [
            replace(
                p,
                name=f"{p.name}-{mask}",
                ln_weight=(1 + 0.5 * rng.standard_normal(p.ln_weight.shape)).astype(np.float32),
                ln_bias=(0.5 * rng.standard_normal(p.ln_bias.shape)).astype(np.float32),
            )
            for p in res.profiles.values()
        ]
    server = ProfileServer(nodrop_bank, profiles, "cpu", cache_gb=cache_gb)
    assert server.cached == (cache_gb > 0)
    # a precomputing server keeps only the precomputed rows, not the bank it mixed them from
    assert hasattr(server.model.table, "stack_a0") == (cache_gb == 0)
    texts = ex.texts[:12]
    pid = [i % len(profiles) for i in range(12)]
    mixed = server.outputs(texts, None, pid, batch_size=12)
    for i, prof in enumerate(profiles):
        model, tok, _ = model_for_profile(nodrop_bank, prof, "cpu")
        rows = [j for j in range(12) if pid[j] == i]
        if not rows:
            continue
        with torch.no_grad():
            own = model(**tok([texts[j] for j in rows], padding=True, truncation=True, return_tensors="pt"))
        torch.testing.assert_close(mixed[rows], own, atol=1e-5, rtol=1e-5)
        alone = server.outputs([texts[j] for j in rows], None, [i] * len(rows))  # one-profile batch
        torch.testing.assert_close(alone, own, atol=1e-5, rtol=1e-5)
    # the per-row route (fixed shapes, no host syncs: what a CUDA graph captures) gives the same
    batch = server.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        per_row = server.model.forward_rows(**batch, row_ids=torch.tensor(pid))
    torch.testing.assert_close(per_row, mixed, atol=1e-5, rtol=1e-5)


def test_sites_of_two_shapes_route_like_own_models(tiny_bert_nodrop):
    """A bank over sites of different shapes (attention value, d×d, and the FFN's d×4d) is mixed
    in one group per shape; rows still get what their profile's own model gives them."""
    from dataclasses import replace

    from xpeft_cli.bank import Bank
    from xpeft_cli.evaluate import model_for_profile
    from xpeft_cli.plm import load_encoder, resolve_model
    from xpeft_cli.serve import ProfileServer

    plm = resolve_model(str(tiny_bert_nodrop))
    enc, _ = load_encoder(plm)
    bank = Bank.create_random(plm, enc, n=8, seed=0, targets="attention.self.value,intermediate.dense")
    assert len({(s.d_in, s.d_out) for s in bank.sites}) == 2
    ex = _multi_examples()
    res = fit_profiles(
        bank, ex, FitConfig(k=3, epochs=1, batch_size=8, device="cpu", labels=["neg", "pos"], val_fraction=0)
    )
    lone = fit_profile(
        bank,
        ex.subset(ex.by_profile()["alice"]),
        "alice",
        FitConfig(k=3, epochs=1, batch_size=8, device="cpu", labels=["neg", "pos"], val_fraction=0),
    )
    assert np.array_equal(lone.profile.mask_a, res.profiles["alice"].mask_a)
    rng = np.random.default_rng(1)
    profiles = [
        replace(p, ln_bias=(0.5 * rng.standard_normal(p.ln_bias.shape)).astype(np.float32))
        for p in res.profiles.values()
    ]
    server = ProfileServer(bank, profiles, "cpu", cache_gb=0)  # mixed per batch, one group per shape
    pid = [i % 3 for i in range(9)]
    mixed = server.outputs(ex.texts[:9], None, pid, batch_size=9)
    batch = server.tokenizer(ex.texts[:9], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            server.model.forward_rows(**batch, row_ids=torch.tensor(pid)), mixed, atol=1e-5, rtol=1e-5
        )
    for i, prof in enumerate(profiles):
        model, tok, _ = model_for_profile(bank, prof, "cpu")
        rows = [j for j in range(9) if pid[j] == i]
        with torch.no_grad():
            own = model(**tok([ex.texts[j] for j in rows], padding=True, truncation=True, return_tensors="pt"))
        torch.testing.assert_close(mixed[rows], own, atol=1e-5, rtol=1e-5)
    cached = ProfileServer(bank, profiles, "cpu")  # precomputed, per group
    assert cached.cached
    torch.testing.assert_close(cached.outputs(ex.texts[:9], None, pid, batch_size=9), mixed, atol=1e-5, rtol=1e-5)
