"""Plots with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402


def plot_confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], path: Path, title: str
) -> Path:
    """Row-normalised confusion matrix; counts are printed when the classes are few."""
    ids = list(range(len(labels)))
    cm = confusion_matrix(y_true, y_pred, labels=ids)
    n = len(labels)
    size = min(4 + 0.28 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    disp = ConfusionMatrixDisplay(norm, display_labels=labels)
    disp.plot(
        ax=ax,
        include_values=n <= 20,
        values_format=".2f",
        cmap="Blues",
        colorbar=n <= 20,
        xticks_rotation="vertical",
    )
    if n > 20:
        ax.tick_params(labelsize=5)
    ax.set_title(title + " — rows normalised")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
