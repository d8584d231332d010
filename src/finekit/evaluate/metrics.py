"""Metrics from scikit-learn; only the calibration error (which sklearn lacks) is hand-written."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class precision/recall/F1/support, confusion matrix."""
    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=ids, average="weighted", zero_division=0)
        ),
        "examples": int(len(y_true)),
        "per_class": {
            name: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def calibration_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> list[dict[str, Any]]:
    """Non-empty equal-width bins of top-label confidence with their mean confidence and accuracy.

    Bins are right-closed, ((m-1)/M, m/M], as in Guo et al. 2017, "On Calibration of Modern
    Neural Networks" (a confidence of 0 falls into the first bin).
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Number of inner edges strictly below conf = index of the right-closed bin.
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    out = []
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        if n:
            out.append(
                {
                    "lower": float(edges[b]),
                    "upper": float(edges[b + 1]),
                    "confidence": float(conf[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                    "count": n,
                }
            )
    return out


def expected_calibration_error(table: list[dict[str, Any]]) -> tuple[float, float]:
    """ECE and MCE from `calibration_bins` (Guo et al. 2017, eqs. 3 and 5).

    ECE = sum_m |acc(B_m) - conf(B_m)| * |B_m| / n; MCE = max_m |acc(B_m) - conf(B_m)|.
    """
    total = sum(b["count"] for b in table)
    if not total:
        return 0.0, 0.0
    gaps = [abs(b["accuracy"] - b["confidence"]) for b in table]
    ece = sum(g * b["count"] for g, b in zip(gaps, table, strict=True)) / total
    return float(ece), float(max(gaps))


def _safe_div(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def probability_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    positive: int | None = None,
    threshold: float = 0.5,
    bins: int = 15,
) -> dict[str, Any]:
    """Metrics that need class probabilities: ROC AUC, calibration, and for two classes the
    clinical operating point (sensitivity, specificity, PPV, NPV at `threshold`) and Brier score.

    `probs` is (N, C) with rows summing to 1. With two classes `positive` (default 1) is the
    class whose probability is thresholded; with more classes the prediction is the argmax.
    `roc_auc` is None when it cannot be computed (a class absent from `y_true`).
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(labels)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"probs must have shape (N, {n_classes}), got {probs.shape}")
    binary = n_classes == 2
    if binary:
        positive = 1 if positive is None else int(positive)
        if positive not in (0, 1):
            raise ValueError(f"positive must be 0 or 1 for two classes, got {positive}")
        y_pred = np.where(probs[:, positive] >= threshold, positive, 1 - positive)
    else:
        y_pred = probs.argmax(axis=1)

    with warnings.catch_warnings():  # a class absent from y_true is reported, not an error
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    out: dict[str, Any] = {
        "balanced_accuracy": balanced,
        "roc_auc": _roc_auc(y_true, probs, n_classes, positive),
    }
    if binary:
        assert positive is not None
        is_pos = (y_true == positive).astype(int)
        tn, fp, fn, tp = confusion_matrix(
            is_pos, (y_pred == positive).astype(int), labels=[0, 1]
        ).ravel()
        out.update(
            {
                "threshold": float(threshold),
                "positive_label": labels[positive],
                "sensitivity": _safe_div(tp, tp + fn),
                "specificity": _safe_div(tn, tn + fp),
                "ppv": _safe_div(tp, tp + fp),
                "npv": _safe_div(tn, tn + fn),
                "brier": float(brier_score_loss(is_pos, probs[:, positive], pos_label=1)),
            }
        )
    table = calibration_bins(y_true, probs, bins)
    out["ece"], out["mce"] = expected_calibration_error(table)
    out["calibration_bins"] = table
    return out


def _roc_auc(
    y_true: np.ndarray, probs: np.ndarray, n_classes: int, positive: int | None
) -> float | None:
    """Binary AUC of the positive class, or macro one-vs-rest AUC; None when undefined."""
    if set(range(n_classes)) - set(np.unique(y_true).tolist()):
        return None
    try:
        if n_classes == 2:
            return float(roc_auc_score(y_true == positive, probs[:, positive]))
        return float(
            roc_auc_score(
                y_true, probs, multi_class="ovr", average="macro", labels=list(range(n_classes))
            )
        )
    except ValueError:  # e.g. rows that do not sum to 1 in the multiclass case
        return None


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics only (what goes into a metrics.jsonl row or a progress bar)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "examples"}
