"""Task metrics, computed with scikit-learn and scipy."""

from __future__ import annotations

from collections import Counter

import numpy as np


def classification_metrics(
    y_true: list[int],
    y_pred: list[int],
    num_classes: int,
    present_only: bool = False,
    train_majority: int | None = None,
) -> dict:
    """present_only: macro-F1 over the classes that occur in y_true or y_pred, not all num_classes
    (a profile's test rows cover few of a shared label set; absent classes would count as F1 0).
    train_majority: the training rows' most common label; its accuracy here is reported too."""
    import warnings

    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    labels = sorted(set(y_true) | set(y_pred)) if present_only else list(range(num_classes))
    with warnings.catch_warnings():  # one class in a profile's rows: MCC is 0 by definition, no need to shout
        warnings.simplefilter("ignore")
        out = _classification(y_true, y_pred, labels, accuracy_score, f1_score, matthews_corrcoef)
    if train_majority is not None:
        out["train_majority_accuracy"] = sum(y == train_majority for y in y_true) / len(y_true) if y_true else 0.0
    return out


def _classification(y_true, y_pred, labels, accuracy_score, f1_score, matthews_corrcoef) -> dict:
    majority = Counter(y_true).most_common(1)[0][1] / len(y_true) if y_true else 0.0
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
        "majority_accuracy": float(majority),
    }


def regression_metrics(y_true: list[float], y_pred: list[float], train_mean: float | None = None) -> dict:
    """train_mean: the training labels' mean; the MSE of always answering it is reported too."""
    from scipy.stats import pearsonr, spearmanr

    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    constant = len(t) < 2 or np.ptp(t) == 0 or np.ptp(p) == 0  # correlation undefined
    out = {
        "n": len(t),
        "pearson": 0.0 if constant else float(pearsonr(t, p)[0]),
        "spearman": 0.0 if constant else float(spearmanr(t, p)[0]),
        "mse": float(np.mean((t - p) ** 2)) if len(t) else 0.0,
        "mean_mse": float(np.var(t)) if len(t) else 0.0,  # what always answering the labels' mean scores
    }
    if train_mean is not None:
        out["train_mean_mse"] = float(np.mean((t - train_mean) ** 2)) if len(t) else 0.0
    return out


def primary_metric(metrics: dict) -> tuple[str, float]:
    """The number to compare runs by: accuracy for classification, Pearson for regression."""
    key = "accuracy" if "accuracy" in metrics else "pearson"
    return key, metrics[key]


# The constant answers a score is held against: the holdout's own most common label or mean (the
# best constant there is; a lone fit's large holdout), or the training rows' (what a user would try
# first for a profile of few rows, whose holdout of 3 rows makes any "best constant" look good).
CONSTANT_BASELINES = {
    "holdout": ("majority_accuracy", "mean_mse"),
    "train": ("train_majority_accuracy", "train_mean_mse"),
}


def no_better_than_constant(metrics: dict | None, against: str = "holdout") -> bool:
    """Whether a validation score is no better than a constant answer: classification accuracy at or
    below that of always answering the most common label, regression MSE at or above that of always
    answering the mean. A fit that ends there learned nothing its data could teach."""
    acc_key, mse_key = CONSTANT_BASELINES[against]
    if not metrics or not metrics.get("n"):
        return False
    if "accuracy" in metrics:
        return acc_key in metrics and metrics["accuracy"] <= metrics[acc_key] + 1e-9
    return mse_key in metrics and metrics["mse"] >= metrics[mse_key] - 1e-12


ADVICE = "try another --seed or lower learning rates (--lr-masks, --lr-head)"


def collapse_warning(metrics: dict | None) -> str | None:
    """One line saying that a lone fit's validation score is no better than the best constant answer
    on its holdout, or None."""
    if not no_better_than_constant(metrics):
        return None
    assert metrics is not None  # no_better_than_constant is False for None
    if "accuracy" in metrics:
        what = (
            f"validation accuracy {metrics['accuracy']:.3f} on {metrics['n']} rows is no better than always "
            f"answering the most common label ({metrics['majority_accuracy']:.3f})"
        )
    else:
        what = (
            f"validation MSE {metrics['mse']:.4g} on {metrics['n']} rows is no better than always answering "
            f"the labels' mean ({metrics['mean_mse']:.4g})"
        )
    return f"{what}: the profile did not learn; {ADVICE}"


def pooled_collapse(per_profile: dict[str, dict]) -> dict | None:
    """For a many-profile fit: how many profiles' holdouts score no better than always answering their
    training rows' most common label (or mean), and whether all holdouts together do (weighted by
    rows), with a one-line warning then. None when no profile has holdout rows."""
    scored = {n: m for n, m in per_profile.items() if m and m.get("n")}
    if not scored:
        return None
    regression = "accuracy" not in next(iter(scored.values()))
    key, base = ("mse", "train_mean_mse") if regression else ("accuracy", "train_majority_accuracy")
    rows = sum(m["n"] for m in scored.values())
    pooled = sum(m[key] * m["n"] for m in scored.values()) / rows
    baseline = sum(m[base] * m["n"] for m in scored.values()) / rows
    collapsed = no_better_than_constant({"n": rows, key: pooled, base: baseline}, "train")
    what = "the mean of its training labels" if regression else "its training rows' most common label"
    return {
        "profiles_scored": len(scored),
        "profiles_no_better_than_constant": sum(no_better_than_constant(m, "train") for m in scored.values()),
        f"pooled_{key}": pooled,
        f"pooled_{base}": baseline,
        "warning": (
            f"pooled validation {key} {pooled:.3f} over {rows} holdout rows of {len(scored)} profiles is no better "
            f"than each profile always answering {what} ({baseline:.3f}): the profiles did not learn; {ADVICE}"
        )
        if collapsed
        else None,
    }
