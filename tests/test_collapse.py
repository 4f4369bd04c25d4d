"""A fit that learned nothing never passes silently: when the validation score is no better than a
constant answer (the most common label, or the labels' mean), fit says so in one line and in --json."""

from __future__ import annotations

import json
import random

import pytest

from xpeft_cli.metrics import (
    classification_metrics,
    collapse_warning,
    no_better_than_constant,
    pooled_collapse,
    regression_metrics,
)

from helpers import sentiment_rows, write_jsonl


def test_constant_baselines_with_known_numbers():
    # 6 of 10 holdout rows are label 1; the training rows' most common label is 0
    y = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    all_ones = classification_metrics(y, [1] * 10, 2, train_majority=0)
    assert all_ones["accuracy"] == pytest.approx(0.6) and all_ones["majority_accuracy"] == pytest.approx(0.6)
    assert all_ones["train_majority_accuracy"] == pytest.approx(0.4)
    assert no_better_than_constant(all_ones) and not no_better_than_constant(all_ones, "train")
    line = collapse_warning(all_ones)
    assert "validation accuracy 0.600 on 10 rows" in line and "(0.600)" in line and "\n" not in line
    learned = classification_metrics(y, [1, 1, 1, 1, 1, 1, 0, 0, 0, 1], 2)
    assert learned["accuracy"] == pytest.approx(0.9) and collapse_warning(learned) is None
    # regression: predicting the holdout mean scores MSE = the labels' variance
    t = [0.0, 1.0, 2.0, 3.0]
    flat = regression_metrics(t, [1.5] * 4, train_mean=0.0)
    assert flat["mse"] == pytest.approx(1.25) and flat["mean_mse"] == pytest.approx(1.25)
    assert flat["train_mean_mse"] == pytest.approx(3.5)
    assert "no better than always answering the labels' mean" in collapse_warning(flat)
    assert collapse_warning(regression_metrics(t, [0.1, 0.9, 2.1, 2.9])) is None
    assert collapse_warning(None) is None and collapse_warning({"n": 0}) is None


def test_pooled_collapse_weights_profiles_by_rows():
    a = classification_metrics([0, 0, 1], [0, 0, 0], 2, train_majority=0)  # 2/3, as its majority label
    b = classification_metrics([1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0], 2, train_majority=1)  # 7/7 vs 3/7
    rep = pooled_collapse({"a": a, "b": b})
    assert rep["profiles_scored"] == 2 and rep["profiles_no_better_than_constant"] == 1
    assert rep["pooled_accuracy"] == pytest.approx(9 / 10) and rep["pooled_train_majority_accuracy"] == pytest.approx(
        5 / 10
    )
    assert rep["warning"] is None
    rep = pooled_collapse({"a": a})
    assert rep["warning"].startswith("pooled validation accuracy 0.667 over 3 holdout rows of 1 profiles")
    assert pooled_collapse({}) is None


def _noise_rows(n: int, seed: int) -> list[dict]:
    """Labels that no text predicts: 85% one label, the rest another, drawn independently of the words."""
    rng = random.Random(seed)
    return [
        {"text": " ".join(rng.choice(["good", "bad", "the", "film", "team"]) for _ in range(4)),
         "label": "common" if rng.random() < 0.85 else "rare"}
        for _ in range(n)
    ]  # fmt: skip


def test_fit_warns_when_the_profile_learned_nothing(cli, tmp_path):
    assert cli("bank", "create", "--random", "-n", "8")[0] == 0
    write_jsonl(tmp_path / "noise.jsonl", _noise_rows(120, 0))
    code, out, err = cli(
        "fit", "--profile", "n", "--data", "noise.jsonl", "--epochs", "2", "--val-fraction", "0.3", "--json"
    )
    res = json.loads(out)
    assert code == 0 and res["val"]["accuracy"] <= res["val"]["majority_accuracy"]
    assert res["warning"].startswith("validation accuracy") and "did not learn" in res["warning"]
    code, out, err = cli("fit", "--profile", "n", "--data", "noise.jsonl", "--epochs", "2", "--val-fraction", "0.3")
    warnings = [line for line in err.splitlines() if line.startswith("xpeft: warning:")]
    assert code == 0 and len(warnings) == 1 and "did not learn" in warnings[0]
    # a profile that learns gets no warning
    write_jsonl(tmp_path / "ok.jsonl", sentiment_rows(80, 0))
    learnable = ("--epochs", "15", "--batch-size", "8", "--lr-head", "3e-2", "--val-fraction", "0.25", "--json")
    code, out, err = cli("fit", "--profile", "ok", "--data", "ok.jsonl", *learnable)
    res = json.loads(out)
    assert code == 0 and res["val"]["accuracy"] > res["val"]["majority_accuracy"] and res["warning"] is None


def test_many_profile_fit_reports_profiles_at_their_majority_label(cli, tmp_path):
    assert cli("bank", "create", "--random", "-n", "8")[0] == 0
    rows = [r | {"profile": p} for p in ("ann", "bob") for r in _noise_rows(60, hash(p) % 100)]
    write_jsonl(tmp_path / "many.jsonl", rows)
    code, out, err = cli(
        "fit", "--data", "many.jsonl", "--profile-column", "profile", "--epochs", "2", "--val-fraction", "0.3",
        "-o", "profs", "--json",
    )  # fmt: skip
    res = json.loads(out)
    assert code == 0 and res["collapse"]["profiles_scored"] == 2
    pooled = res["collapse"]["pooled_accuracy"]
    assert pooled <= res["collapse"]["pooled_train_majority_accuracy"] and res["warning"].startswith("pooled")
