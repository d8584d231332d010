"""What text and image classification share, as functions (not a base class): labels read
as text, label names, the seeded hold-outs and k-per-class sampling, the label metrics and
top-1 predictions. Each part (`text.py`, `image.py`) calls these with its own columns."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from finekit.data.splits import Splits, fold_holdout, holdout, sample_per_class
from finekit.errors import DataError, RecipeError
from finekit.evaluate.metrics import classification_metrics
from finekit.recipe import Recipe

log = logging.getLogger(__name__)


def as_label(values: pd.Series) -> list[str]:
    """Labels as strings: ints stay readable ("3"), floats that are ints lose ".0"."""
    out = []
    for v in values.tolist():
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(str(v).strip())
    return out


def label_names(values: pd.Series) -> list[str]:
    names = sorted(set(as_label(values)))
    if all(n.lstrip("-").isdigit() for n in names):
        names = sorted(names, key=int)  # 0, 1, 2, ..., 10 (not 0, 1, 10, 2)
    return names


def named(df: pd.DataFrame, column: str, names: dict[str, str]) -> pd.DataFrame:
    """Integer labels -> the names of `task.label_names` (others stay as they are)."""
    if not names or column not in df.columns:
        return df
    return df.assign(**{column: [names.get(v, v) for v in as_label(df[column])]})


def check_seen(
    df: pd.DataFrame, labels: list[str], column: str, source: str, train_source: str
) -> None:
    """Labels the model has no output for cannot be scored: name them."""
    unseen = sorted(set(as_label(df[column])) - set(labels))
    if unseen:
        raise DataError(
            f"{source}: label(s) {unseen[:10]} in column {column!r} never occur "
            f"in {train_source}; remove those rows or add training examples"
        )


def check_metric(recipe: Recipe, metric_names: tuple[str, ...]) -> None:
    if recipe.evaluation.metric not in metric_names:
        raise RecipeError(
            f"evaluation.metric={recipe.evaluation.metric!r} is not a classify metric; "
            f"allowed: {', '.join(metric_names)}"
        )


def split_labelled(
    splits: Splits,
    recipe: Recipe,
    column: str,
    names: dict[str, str],
    check: Callable[[pd.DataFrame, str], None],
) -> tuple[Splits, list[str], dict[str, Any]]:
    """Check every split (`check(df, source)`), name integer labels, read the classes off
    the training data, refuse unseen labels elsewhere, hold out test/validation (stratified)
    or cut a fold, sample k per class; returns (splits, labels, run.json's data info)."""
    d, seed = recipe.data, recipe.training.seed
    for split, df in splits.items():
        check(df, splits.sources.get(split, split))
    if names:
        splits = Splits(
            **{s: named(df, column, names) for s, df in splits.items()}, sources=splits.sources
        )
    train, src = splits.train, splits.sources["train"]
    labels = label_names(train[column])
    for split, df in splits.items():
        if split != "train":
            check_seen(df, labels, column, splits.sources[split], f"training data {src}")
    train = train.assign(**{column: as_label(train[column])})
    val, test = splits.validation, splits.test
    if val is not None:
        val = val.assign(**{column: as_label(val[column])})
    if test is not None:
        test = test.assign(**{column: as_label(test[column])})
    sources = dict(splits.sources)
    if test is None and d.test_fraction > 0:
        train, test = holdout(train, d.test_fraction, seed, column, src, "test")
        sources["test"] = f"{d.test_fraction:.0%} held out of {src}"
    if d.folds is not None:
        train, val = fold_holdout(train, d.folds, seed, column, src)
        sources["validation"] = f"fold {d.folds.index + 1} of {d.folds.k} of {src}"
    elif val is None and d.validation_fraction > 0:
        train, val = holdout(train, d.validation_fraction, seed, column, src, "validation")
        sources["validation"] = f"{d.validation_fraction:.0%} held out of {src}"
    if d.k_per_class is not None:
        train = sample_per_class(train, column, d.k_per_class, seed, src, cap=d.k_per_class_cap)
    if d.max_train_samples is not None and len(train) > d.max_train_samples:
        train = train.sample(n=d.max_train_samples, random_state=seed).reset_index(drop=True)
    missing = sorted(set(labels) - set(train[column]))
    if missing:
        log.warning("classes absent from the sampled training set: %s", missing[:10])
    out = Splits(train=train, validation=val, test=test, sources=sources)
    info = {
        "labels": labels,
        "num_labels": len(labels),
        "rows": {s: int(len(df)) for s, df in out.items()},
        "sources": sources,
        "train_class_counts": {
            k: int(v) for k, v in train[column].value_counts().sort_index().items()
        },
    }
    return out, labels, info


def train_rows(info: dict[str, Any]) -> int | None:
    """Training examples, from `split_labelled`'s info or a run's `data` record."""
    rows = info.get("rows") or {}
    return int(rows["train"]) if "train" in rows else None


def label_metrics(outputs: dict[str, torch.Tensor], labels: list[str]) -> dict[str, Any]:
    """Accuracy, F1s and per-class metrics of the top-1 predictions, and the cross-entropy
    of the predicted probabilities (the validation loss beside the training loss)."""
    probs, y = outputs["probs"], outputs["labels"]
    preds = probs.argmax(-1).cpu().numpy()
    m = classification_metrics(y.cpu().numpy(), preds, labels)
    picked = probs.gather(1, y.long().view(-1, 1)).clamp_min(1e-12)
    return {"loss": float(-picked.log().mean()), **m}


def top_labels(probs: torch.Tensor, labels: list[str]) -> list[dict[str, Any]]:
    top = probs.argmax(-1)
    return [{"label": labels[int(t)], "score": float(probs[i, t])} for i, t in enumerate(top)]
