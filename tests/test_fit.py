"""Fitting on a tiny model: reproducibility, the file round trip, and learning."""

from __future__ import annotations

import pytest
import torch

from xpeft_cli import Bank, FitConfig, evaluate_profile, fit_profile, load_examples, read_xpm, write_xpm
from xpeft_cli.batches import predict_outputs
from xpeft_cli.evaluate import model_for_profile

from helpers import make_bank


@pytest.fixture()
def bank(tiny_bert, tmp_path):
    make_bank(tiny_bert, tmp_path / "bank", n=24)
    return Bank.load(tmp_path / "bank")


CFG = dict(k=6, epochs=3, batch_size=8, lr_head=3e-2, lr_ln=1e-2, device="cpu")


@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_same_seed_same_bytes(bank, sentiment_files, tmp_path, mask):
    train = load_examples(sentiment_files[0])
    paths = []
    for i in range(2):
        res = fit_profile(bank, train, "alice", FitConfig(mask=mask, seed=7, **CFG))
        paths.append(tmp_path / f"run{i}.xpm")
        write_xpm(res.profile, paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()
    other = fit_profile(bank, train, "alice", FitConfig(mask=mask, seed=8, **CFG))
    assert (
        write_xpm(other.profile, tmp_path / "other.xpm")
        and (tmp_path / "other.xpm").read_bytes() != paths[0].read_bytes()
    )


@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_file_round_trip_gives_same_predictions(bank, sentiment_files, tmp_path, mask):
    train, test = load_examples(sentiment_files[0]), load_examples(sentiment_files[1])
    res = fit_profile(bank, train, "bob", FitConfig(mask=mask, seed=1, **CFG))
    in_memory = predict_outputs(res.model, res.tokenizer, test, 16, 128, torch.device("cpu"))
    write_xpm(res.profile, tmp_path / "bob.xpm")
    prof = read_xpm(tmp_path / "bob.xpm")
    model, tok, dev = model_for_profile(bank, prof, "cpu")
    from_file = predict_outputs(model, tok, test, 16, 128, dev)
    assert torch.equal(in_memory, from_file)
    if mask == "hard":
        assert all(r.sum() == 6 for r in prof.mask_a) and all(r.sum() == 6 for r in prof.mask_b)


def test_learns_the_tiny_task_and_masks_move(bank, sentiment_files):
    train, test = load_examples(sentiment_files[0]), load_examples(sentiment_files[1])
    res = fit_profile(
        bank,
        train,
        "carol",
        FitConfig(
            mask="soft", seed=0, k=6, epochs=15, batch_size=8, lr_head=3e-2, lr_ln=1e-2, device="cpu", val_fraction=0
        ),
    )
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    la, lb = res.model.mask_logits()
    assert la.abs().max() > 0.05 and lb.abs().max() > 0.05  # masks are learned, not left uniform
    metrics, preds = evaluate_profile(bank, res.profile, test, device="cpu")
    assert metrics["accuracy"] > metrics["majority_accuracy"]
    assert set(preds) <= {"pos", "neg"}


def test_regression_task(bank, tmp_path):
    from helpers import sentiment_rows, write_jsonl

    rows = [{"text": r["text"], "label": 4.5 if r["label"] == "pos" else 0.5} for r in sentiment_rows(40)]
    rows[0]["label"] = 4.25
    ex = load_examples(write_jsonl(tmp_path / "reg.jsonl", rows))
    res = fit_profile(bank, ex, "rita", FitConfig(mask="hard", seed=0, **CFG))
    assert res.profile.task == "regression" and res.profile.head_weight.shape[0] == 1
    assert set(res.val_metrics) >= {"pearson", "spearman", "mse"}
