"""Task metrics, computed with scikit-learn and scipy."""

from __future__ import annotations

from collections import Counter

import numpy as np


def classification_metrics(y_true: list[int], y_pred: list[int], num_classes: int, present_only: bool = False) -> dict:
    """present_only: macro-F1 over the classes that occur in y_true or y_pred, not all num_classes
    (a profile's test rows cover few of a shared label set; absent classes would count as F1 0)."""
    import warnings

    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    labels = sorted(set(y_true) | set(y_pred)) if present_only else list(range(num_classes))
    with warnings.catch_warnings():  # one class in a profile's rows: MCC is 0 by definition, no need to shout
        warnings.simplefilter("ignore")
        return _classification(y_true, y_pred, labels, accuracy_score, f1_score, matthews_corrcoef)


def _classification(y_true, y_pred, labels, accuracy_score, f1_score, matthews_corrcoef) -> dict:
    majority = Counter(y_true).most_common(1)[0][1] / len(y_true) if y_true else 0.0
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
        "majority_accuracy": float(majority),
    }


def regression_metrics(y_true: list[float], y_pred: list[float]) -> dict:
    from scipy.stats import pearsonr, spearmanr

    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    constant = len(t) < 2 or np.ptp(t) == 0 or np.ptp(p) == 0  # correlation undefined
    return {
        "n": len(t),
        "pearson": 0.0 if constant else float(pearsonr(t, p)[0]),
        "spearman": 0.0 if constant else float(spearmanr(t, p)[0]),
        "mse": float(np.mean((t - p) ** 2)) if len(t) else 0.0,
    }


def primary_metric(metrics: dict) -> tuple[str, float]:
    """The number to compare runs by: accuracy for classification, Pearson for regression."""
    key = "accuracy" if "accuracy" in metrics else "pearson"
    return key, metrics[key]
