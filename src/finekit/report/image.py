"""Report sections of image classification: the data as decoded (modes, sizes, skipped
files), the clinical metrics (sensitivity, specificity, AUC, calibration) and per-class
metrics. The evaluation plots (confusion, ROC, reliability, Grad-CAM) follow from eval/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finekit.report.html import esc, table

CLINICAL = (
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "ece",
    "brier",
)


def sections(task: Any, run_dir: Path, recipe: Any, run: dict[str, Any]) -> list[tuple[str, str]]:
    data = run.get("data", {})
    rows = data.get("rows", {})
    sources = data.get("sources", {})
    images = data.get("images", {})
    parts = [
        table(
            ["split", "images", "skipped (unreadable)", "modes", "sizes (top)", "source"],
            [
                [
                    s,
                    n,
                    images.get(s, {}).get("skipped", 0),
                    ", ".join(f"{k} {v}" for k, v in images.get(s, {}).get("modes", {}).items()),
                    ", ".join(f"{k} ({v})" for k, v in images.get(s, {}).get("sizes", {}).items()),
                    sources.get(s, ""),
                ]
                for s, n in rows.items()
            ],
            left=1,
        )
    ]
    skipped = [x for s in images.values() for x in s.get("skipped_examples", [])]
    if skipped:
        parts.append(
            "<p class=warn>Skipped images (data.on_bad_image: skip):</p><ul>"
            + "".join(f"<li>{esc(x)}</li>" for x in skipped[:10])
            + "</ul>"
        )
    counts = data.get("train_class_counts", {})
    aug = data.get("augment") or {}
    parts.append(
        f"<p>Training class counts: {esc(counts)}; class weights: "
        f"{esc(data.get('class_weights'))}; input side {esc(task.size or '?')}"
        f" px (from task.image_size or the backbone processor); augmentation: {esc(aug)}.</p>"
    )
    out = [("Data", "".join(parts))]
    metrics = run.get("metrics", {})
    rows_m = [[s, *[m.get(k) for k in CLINICAL]] for s, m in metrics.items() if isinstance(m, dict)]
    if rows_m:
        pos = data.get("positive_label")
        thr = next((m.get("threshold") for m in metrics.values() if "threshold" in m), None)
        out.append(
            (
                "Clinical metrics",
                table(["split", *CLINICAL], rows_m)
                + (
                    f"<p class=muted>Sensitivity/specificity for positive class "
                    f"<b>{esc(pos)}</b> at threshold {esc(thr)}; ECE: expected calibration "
                    "error of the top-label confidence (15 bins, Guo et al. 2017).</p>"
                    if pos is not None
                    else ""
                ),
            )
        )
    split = "test" if "test" in metrics else ("validation" if "validation" in metrics else None)
    if split and "per_class" in metrics[split]:
        pc = metrics[split]["per_class"]
        out.append(
            (
                f"Per-class metrics ({split})",
                table(
                    ["class", "precision", "recall", "F1", "support"],
                    [
                        [k, v["precision"], v["recall"], v["f1"], v["support"]]
                        for k, v in pc.items()
                    ],
                ),
            )
        )
    return out
