"""Per-slice metrics: the same metric on each value of a column (site, scanner, sex,
language...), and the gap between the best and the worst slice — a defect a model may
inherit from its base model or from skewed data, invisible in the overall number.

Works for any task: the task's own `metrics` on the subset of per-example outputs.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from finekit.errors import DataError


def check_slice_columns(df: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{source}: evaluation.slices names column(s) {missing} that it does not have; "
            f"columns are {[str(c) for c in df.columns]}"
        )


def slice_metrics(
    task: Any,
    outputs: dict[str, torch.Tensor],
    rows: pd.DataFrame,
    columns: list[str],
    metric: str,
    higher_is_better: bool = True,
    min_examples: int = 10,
    gap_alarm: float = 0.1,
) -> dict[str, Any]:
    """{column: {by_value: {value: {metric, examples}}, gap, worst, best, flagged}}.
    Slices smaller than `min_examples` are reported but left out of the gap."""
    out: dict[str, Any] = {}
    n = len(rows)
    for col in columns:
        by_value: dict[str, dict[str, Any]] = {}
        values = rows[col].astype(str).fillna("<missing>").tolist()
        for value in sorted(set(values)):
            idx = torch.tensor([i for i, v in enumerate(values) if v == value])
            sub = {k: v[idx] for k, v in outputs.items() if torch.is_tensor(v) and len(v) == n}
            m = task.metrics(sub)
            by_value[value] = {
                metric: m.get(metric),
                "accuracy": m.get("accuracy"),
                "examples": len(idx),
            }
        scored = {
            v: d[metric]
            for v, d in by_value.items()
            if d["examples"] >= min_examples and isinstance(d[metric], (int, float))
        }
        entry: dict[str, Any] = {"by_value": by_value, "gap": None, "flagged": False}
        if len(scored) >= 2:
            pick_worst = min if higher_is_better else max
            pick_best = max if higher_is_better else min
            worst = pick_worst(scored, key=lambda v: scored[v])
            best = pick_best(scored, key=lambda v: scored[v])
            gap = abs(scored[best] - scored[worst])
            entry.update({"gap": gap, "worst": worst, "best": best, "flagged": gap > gap_alarm})
        out[col] = entry
    return out


def slice_alarms(slices: dict[str, Any], metric: str, split: str, gap_alarm: float) -> list[str]:
    msgs = []
    for col, e in slices.items():
        if e.get("flagged"):
            bv = e["by_value"]
            msgs.append(
                f"slice gap on {split}: {metric} for {col}={e['worst']} is "
                f"{bv[e['worst']][metric]:.3f} vs {bv[e['best']][metric]:.3f} for "
                f"{col}={e['best']} (gap {e['gap']:.3f} > {gap_alarm})"
            )
    return msgs
