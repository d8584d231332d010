"""Metrics from scikit-learn (no hand-written formulas)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
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


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics only (what goes into a metrics.jsonl row or a progress bar)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "examples"}
