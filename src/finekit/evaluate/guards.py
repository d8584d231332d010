"""User-given evaluation sets: an edge-case file (`evaluation.edge_cases`, split
`edge_cases`) and "must not regress" guard sets (`evaluation.guard`), read with the
training data's readers and checked by the task before the run directory exists, then
evaluated like any split; a guard whose headline metric got worse than before training by
more than the tolerance raises an alarm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from finekit.core.contracts import Task
from finekit.data.splits import read_splits
from finekit.errors import DataError
from finekit.recipe import Recipe

EDGE_CASES = "edge_cases"


def eval_set_paths(r: Recipe) -> dict[str, tuple[str, str, str]]:
    """name -> (recipe field, path, format) of every user-given evaluation set."""
    ev = r.evaluation
    out = {}
    if ev.edge_cases is not None:
        out[EDGE_CASES] = ("evaluation.edge_cases", ev.edge_cases, "auto")
    for i, g in enumerate(ev.guard):
        out[g.name] = (f"evaluation.guard[{i}] ({g.name})", g.path, g.format)
    return out


def read_eval_sets(r: Recipe, task: Task) -> dict[str, pd.DataFrame]:
    """Each set's rows, read like `data.train` and checked by the prepared task (columns,
    labels it knows); a missing file or column is a DataError naming field and file."""
    out = {}
    for name, (field, path, fmt) in eval_set_paths(r).items():
        if not path.startswith("hf://") and not Path(path).exists():
            raise DataError(f"{field}: {path} does not exist")
        as_train = r.data.model_copy(
            update={"train": path, "validation": None, "test": None, "format": fmt}
        )
        try:
            df = read_splits(as_train, train_only=True).train
            df = task.read_inputs(df, path, with_labels=True)
        except DataError as e:
            raise DataError(f"{field}: {e}") from None
        if len(df) == 0:
            raise DataError(f"{field}: {path} holds no examples")
        out[name] = df.reset_index(drop=True)
    return out


def worse_by(before: float, after: float, higher_is_better: bool, tol: float, rel: float) -> bool:
    """Scores: lower by more than `tol` (absolute); losses/perplexities: higher by more
    than `rel` of the before value."""
    if higher_is_better:
        return after < before - tol
    return after > before * (1.0 + rel)


def guard_alarms(
    metrics: dict[str, dict[str, Any]],
    names: list[str],
    metric: str,
    higher_is_better: bool,
    tol: float,
    rel: float,
) -> list[str]:
    msgs = []
    for name in names:
        m = metrics.get(name, {})
        b, a = m.get(f"{metric}_before"), m.get(metric)
        if not isinstance(b, (int, float)) or not isinstance(a, (int, float)):
            continue
        if worse_by(float(b), float(a), higher_is_better, tol, rel):
            allowed = f"{tol} absolute" if higher_is_better else f"{rel:.0%} relative"
            msgs.append(
                f"guard {name!r} regressed: {metric} {b:.4g} before "
                f"({m.get('baseline', 'base model')}) -> {a:.4g} after fine-tuning "
                f"(tolerance {allowed}, evaluation.guard_tolerance"
                f"{'' if higher_is_better else '_relative'})"
            )
    return msgs
