"""Report data of image classification: the data as decoded (modes, sizes, skipped
files), the clinical metrics (sensitivity, specificity, AUC, calibration) and per-class
metrics. The evaluation plots (confusion, ROC, reliability, Grad-CAM) follow from eval/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finekit.core.contracts import Block, Bullets, ReportSection, Table, Text

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


def sections(task: Any, run_dir: Path, recipe: Any, run: dict[str, Any]) -> list[ReportSection]:
    data = run.get("data", {})
    rows = data.get("rows", {})
    sources = data.get("sources", {})
    images = data.get("images", {})
    parts: list[Block] = [
        Table(
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
        )
    ]
    skipped = [x for s in images.values() for x in s.get("skipped_examples", [])]
    if skipped:
        parts.append(Text("Skipped images (data.on_bad_image: skip):", "warn"))
        parts.append(Bullets([str(x) for x in skipped[:10]]))
    counts = data.get("train_class_counts", {})
    aug = data.get("augment") or {}
    parts.append(
        Text(
            f"Training class counts: {counts}; class weights: {data.get('class_weights')}; "
            f"input side {task.size or '?'} px (from task.image_size or the backbone "
            f"processor); augmentation: {aug}."
        )
    )
    out = [ReportSection("Data", parts)]
    metrics = run.get("metrics", {})
    rows_m = [[s, *[m.get(k) for k in CLINICAL]] for s, m in metrics.items() if isinstance(m, dict)]
    if rows_m:
        pos = data.get("positive_label")
        thr = next((m.get("threshold") for m in metrics.values() if "threshold" in m), None)
        blocks: list[Block] = [Table(["split", *CLINICAL], rows_m)]
        if pos is not None:
            blocks.append(
                Text(
                    f"Sensitivity/specificity for positive class {pos} at threshold {thr}; "
                    "ECE: expected calibration error of the top-label confidence (15 bins, "
                    "Guo et al. 2017).",
                    "muted",
                )
            )
        out.append(ReportSection("Clinical metrics", blocks))
    split = "test" if "test" in metrics else ("validation" if "validation" in metrics else None)
    if split and "per_class" in metrics[split]:
        pc = metrics[split]["per_class"]
        out.append(
            ReportSection(
                f"Per-class metrics ({split})",
                [
                    Table(
                        ["class", "precision", "recall", "F1", "support"],
                        [
                            [k, v["precision"], v["recall"], v["f1"], v["support"]]
                            for k, v in pc.items()
                        ],
                    )
                ],
            )
        )
    return out
