"""Per-slice metrics: the same metric on each value of a column (site, scanner, sex,
language...), and the gap between the best and the worst slice — a defect a model may
inherit from its base model or from skewed data, invisible in the overall number.

Works for any task: the task's own `metrics` on the subset of per-example outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from finekit.errors import DataError


def task_metric(ev: Any, task: Any) -> tuple[str, bool]:
    """The task-level metric slices and guard sets are scored by, and whether higher is
    better: `evaluation.metric`, or the task's headline metric when that is a retention
    measure (a property of the whole model, not of rows)."""
    from finekit.recipe import RETENTION_METRICS

    if ev.metric not in RETENTION_METRICS:
        return ev.metric, ev.resolved_mode() == "max"
    m = task.metric_names[0]
    return m, ev.model_copy(update={"metric": m, "mode": "auto"}).resolved_mode() == "max"


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
    rescore: Callable[[pd.DataFrame], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """{column: {by_value: {value: {metric, examples}}, gap, worst, best, flagged}}.
    Slices smaller than `min_examples` are reported but left out of the gap.

    Per-example outputs (one per row, with its `labels`, as classifiers give) are subset;
    otherwise (an LM's packed blocks mix rows) `rescore(rows_of_the_slice)` evaluates each
    slice's rows on their own."""
    out: dict[str, Any] = {}
    n = len(rows)
    per_row = "labels" in outputs and all(
        len(v) == n for v in outputs.values() if torch.is_tensor(v)
    )
    if not per_row and rescore is None:
        raise ValueError("outputs are not one per row: slices need a rescore function")
    for col in columns:
        by_value: dict[str, dict[str, Any]] = {}
        values = rows[col].astype(str).fillna("<missing>").tolist()
        for value in sorted(set(values)):
            idx = torch.tensor([i for i, v in enumerate(values) if v == value])
            if per_row:
                sub = {k: v[idx] for k, v in outputs.items() if torch.is_tensor(v) and len(v) == n}
                m = task.metrics(sub)
            else:
                m = rescore(rows.iloc[idx.tolist()])  # type: ignore[misc]
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
            gap = slice_gap({best: scored[best], worst: scored[worst]}, metric, higher_is_better)
            gap = abs(scored[best] - scored[worst]) if gap is None else gap
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


def slice_gap(values: dict[str, float], metric: str, higher_is_better: bool) -> float | None:
    """Best-to-worst distance of slice values: the difference for scores; for perplexity
    the log-ratio ln(worst/best), the gap in nats per token, comparable across models."""
    if len(values) < 2:
        return None
    if "perplexity" in metric:
        if min(values.values()) <= 0:
            return None
        return math.log(max(values.values()) / min(values.values()))
    return max(values.values()) - min(values.values())


def compare_slices(
    tuned: dict[str, Any],
    base: dict[str, Any],
    metric: str,
    higher_is_better: bool,
    min_examples: int,
    gap_alarm: float,
    base_kind: str,
) -> dict[str, Any]:
    """Adds the base model to each tuned slice entry: `by_value[v]` gets `base` and `tuned`
    values, the entry `gap_base`, `gap_tuned` (over slices with >= `min_examples`) and
    `gap_widened` (the tuned gap exceeds the base gap by more than `gap_alarm`)."""
    out: dict[str, Any] = {}
    for col, e in tuned.items():
        b = base.get(col, {}).get("by_value", {})
        entry = {**e, "metric": metric, "base": base_kind, "by_value": {}}
        t_vals, b_vals = {}, {}
        for value, d in e["by_value"].items():
            bv = b.get(value, {}).get(metric)
            entry["by_value"][value] = {**d, "tuned": d.get(metric), "base": bv}
            if d["examples"] >= min_examples and isinstance(d.get(metric), (int, float)):
                t_vals[value] = float(d[metric])
                if isinstance(bv, (int, float)):
                    b_vals[value] = float(bv)
        gap_t = slice_gap(t_vals, metric, higher_is_better)
        gap_b = slice_gap(b_vals, metric, higher_is_better) if len(b_vals) == len(t_vals) else None
        entry["gap_tuned"], entry["gap_base"] = gap_t, gap_b
        entry["gap_widened"] = bool(
            gap_t is not None and gap_b is not None and gap_t - gap_b > gap_alarm
        )
        out[col] = entry
    return out


def widened_alarms(slices: dict[str, Any], metric: str, split: str, gap_alarm: float) -> list[str]:
    unit = " nats" if "perplexity" in metric else ""
    return [
        f"slice gap widened on {split}: {metric} gap across {col} is {e['gap_tuned']:.3f}{unit} "
        f"after fine-tuning vs {e['gap_base']:.3f}{unit} for the base model ({e['base']}); "
        f"worse by more than evaluation.slice_gap_alarm={gap_alarm}"
        for col, e in slices.items()
        if e.get("gap_widened")
    ]
