"""Plots with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    RocCurveDisplay,
    confusion_matrix,
)

from finekit.evaluate.metrics import (  # noqa: E402
    calibration_bins,
    expected_calibration_error,
)

MAX_ROC_CURVES = 10


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


def png_bytes(fig: plt.Figure, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (closed after), for report data."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(
    y_true: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    path: Path,
    title: str,
    positive: int | None = None,
) -> Path:
    """ROC curve(s) via sklearn's RocCurveDisplay, AUC in the legend.

    Two classes: one curve for `positive` (default 1). More: one-vs-rest per class, at most
    MAX_ROC_CURVES. A class without both positives and negatives has no curve (noted instead).
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if len(labels) == 2:
        classes = [1 if positive is None else int(positive)]
    else:
        classes = list(range(min(len(labels), MAX_ROC_CURVES)))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    skipped = []
    drawn = 0
    for c in classes:
        is_c = y_true == c
        if is_c.all() or not is_c.any():
            skipped.append(labels[c])
            continue
        RocCurveDisplay.from_predictions(
            is_c.astype(int), probs[:, c], pos_label=1, name=labels[c], ax=ax
        )
        drawn += 1
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    note = []
    if len(labels) > MAX_ROC_CURVES:
        note.append(f"first {MAX_ROC_CURVES} of {len(labels)} classes")
    if skipped:
        note.append("no curve (one class only): " + ", ".join(skipped))
    if note:
        ax.text(0.02, 0.98, "\n".join(note), transform=ax.transAxes, va="top", fontsize=7)
    ax.legend(loc="lower right", fontsize=7 if drawn > 4 else 9)
    ax.set_title(title)
    return _save(fig, path)


def plot_reliability(
    y_true: np.ndarray, probs: np.ndarray, path: Path, title: str, bins: int = 15
) -> Path:
    """Reliability diagram (Guo et al. 2017, fig. 1): accuracy vs top-label confidence per
    equal-width bin, against the diagonal of perfect calibration, with bin counts below."""
    table = calibration_bins(y_true, probs, bins)
    ece, _ = expected_calibration_error(table)
    width = 1.0 / bins
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    lowers = [b["lower"] for b in table]
    acc = [b["accuracy"] for b in table]
    ax.bar(
        lowers,
        acc,
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    ax.bar(
        lowers,
        [b["confidence"] - a for b, a in zip(table, acc, strict=True)],
        bottom=acc,
        width=width,
        align="edge",
        fill=False,
        hatch="//",
        edgecolor="tab:red",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title} — ECE {ece:.3f}")
    ax_n.bar(lowers, [b["count"] for b in table], width=width, align="edge", color="grey")
    ax_n.set_xlabel("Confidence (top-label probability)")
    ax_n.set_ylabel("Examples")
    return _save(fig, path)
