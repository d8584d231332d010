"""Splits: read train/validation/test, hold out stratified parts, sample k per class.

Splitting is reproducible by seed; every impossible request (too few examples of a class)
is an error naming the classes and their counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from finekit.data.images import (
    folder_split_dir,
    npz_splits,
    read_image_folder,
    read_npz,
    resolve_manifest_paths,
)
from finekit.data.readers import HF_SPLITS, dataset_dict_splits, detect_format, read_table
from finekit.errors import DataError

if TYPE_CHECKING:  # the recipe schema sits above the data room
    from finekit.recipe import DataSpec, FoldSpec

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """DataFrames per split plus where each came from (a file, or 'held out of <file>')."""

    train: pd.DataFrame
    validation: pd.DataFrame | None = None
    test: pd.DataFrame | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        out = [("train", self.train)]
        if self.validation is not None:
            out.append(("validation", self.validation))
        if self.test is not None:
            out.append(("test", self.test))
        return out


def read_splits(spec: DataSpec, train_only: bool = False) -> Splits:
    """Read the files named in `data`; an HF DatasetDict given as train also fills the rest.
    `train_only`: just the training rows (a replay corpus, a guard set read like train)."""

    def _read(path: str, split: str) -> pd.DataFrame:
        labels = [spec.label_column, *[k for k, v in spec.rename.items() if v == spec.label_column]]
        df = read_table(path, spec.format, spec.hf_splits.get(split), labels)
        present = {k: v for k, v in spec.rename.items() if k in df.columns}
        return df.rename(columns=present) if present else df

    _check_folds(spec)
    fmt = detect_format(spec.train) if spec.format == "auto" else spec.format
    if fmt in ("npz", "images"):
        return _read_image_splits(spec, fmt, train_only)
    train = _read(spec.train, "train")
    if spec.image_column is not None:
        train = resolve_manifest_paths(train, spec.image_column, spec.train)
    sources = {"train": spec.train}
    out = Splits(train=train, sources=sources)
    for split in () if train_only else ("validation", "test"):
        path = getattr(spec, split)
        if path is None and split == "validation" and spec.folds is not None:
            continue  # cross-validation: the folds of data.train replace a shipped split
        if path is None and _is_dataset_dict(spec.train, spec.format):
            hf_name = spec.hf_splits[split]
            has = _has_split(spec.train, hf_name)
            if has:
                path = spec.train
            elif has is False and hf_name != HF_SPLITS[split]:  # named on purpose: no hold-out
                listed = dataset_dict_splits(spec.train)
                raise DataError(
                    f"data.hf_splits.{split}: {spec.train} has no split {hf_name!r}"
                    + (f" (its splits: {listed})" if listed else "")
                )
        if path is not None:
            df = _read(path, split)
            if spec.image_column is not None:
                df = resolve_manifest_paths(df, spec.image_column, path)
            setattr(out, split, df)
            sources[split] = path if path != spec.train else f"{path}[{spec.hf_splits[split]}]"
    return out


def _check_folds(spec: DataSpec) -> None:
    """Cross-validation draws validation from the folds of data.train (a validation split
    shipped inside data.train is left out); a validation file named as well would be
    ignored silently, so it is an error."""
    if spec.folds is not None and spec.validation is not None:
        raise DataError(
            f"data.folds cross-validates on folds of {spec.train}, but data.validation is "
            f"given too ({spec.validation}); drop data.validation or the folds"
        )


def _read_image_splits(spec: DataSpec, fmt: str, train_only: bool = False) -> Splits:
    """Folders and .npz files; an .npz or a split folder tree given as train also fills
    validation/test from its own val/test parts when those are not named."""

    def read(path: str, split: str) -> pd.DataFrame:
        f = detect_format(path) if spec.format == "auto" else spec.format
        if f == "npz":
            return read_npz(
                path, split if path == spec.train else _only_split(path), spec.label_column
            )
        if f == "images":
            return read_image_folder(
                path, split if path == spec.train else "train", spec.label_column
            )
        raise DataError(f"{path}: mixing image data ({fmt}) with {f} files is not supported")

    out = Splits(train=read(spec.train, "train"), sources={"train": spec.train})
    for split in () if train_only else ("validation", "test"):
        path = getattr(spec, split)
        if path is None and split == "validation" and spec.folds is not None:
            continue  # cross-validation: the folds of data.train replace a shipped split
        if path is None and _has_own_split(spec.train, fmt, split):
            path = spec.train
            out.sources[split] = f"{spec.train}[{split}]"
        elif path is not None:
            out.sources[split] = path
        if path is not None:
            setattr(out, split, read(path, split))
    return out


def _only_split(path: str) -> str:
    """A separate .npz for one split: its train arrays, or its only split."""
    splits = npz_splits(path)
    return "train" if "train" in splits else next(iter(splits))


def _has_own_split(path: str, fmt: str, split: str) -> bool:
    if fmt == "npz":
        return split in npz_splits(path)
    return folder_split_dir(path, split) is not None and folder_split_dir(path, "train") is not None


def _is_dataset_dict(path: str, fmt: str) -> bool:
    if path.startswith("hf://"):
        return True
    return (fmt in ("auto", "hf")) and (Path(path) / "dataset_dict.json").exists()


def _has_split(path: str, split: str) -> bool | None:
    """Whether the DatasetDict has `split`; None when the hub could not be asked."""
    if path.startswith("hf://"):
        import datasets

        try:
            return split in datasets.get_dataset_split_names(path[len("hf://") :])
        except Exception as e:  # offline, several configs...: fall back to a hold-out split
            log.warning(
                "could not list the splits of %s (%s); its %r split is not used", path, e, split
            )
            return None
    return split in dataset_dict_splits(path)


def holdout(
    df: pd.DataFrame, fraction: float, seed: int, stratify: str | None, source: str, what: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split `fraction` of `df` off (stratified on column `stratify` when given)."""
    n_held = max(1, round(len(df) * fraction))
    labels = df[stratify] if stratify else None
    if labels is not None:
        counts = labels.value_counts()
        n_classes = len(counts)
        n_held = max(n_held, n_classes)  # a stratified split needs each class once
        rare = counts[counts < 2]
        if len(rare) or len(df) - n_held < n_classes:
            raise DataError(
                f"{source}: cannot hold out a stratified {what} split: "
                + (
                    f"classes with fewer than 2 examples: {_fmt_counts(rare)}"
                    if len(rare)
                    else f"{len(df)} rows are too few for {n_classes} classes"
                )
                + f"; give a {what} file (data.{what}), set data.{what}_fraction=0, "
                "or add examples"
            )
    rest, held = train_test_split(
        df, test_size=n_held, random_state=seed, stratify=labels, shuffle=True
    )
    return rest.reset_index(drop=True), held.reset_index(drop=True)


def fold_holdout(
    df: pd.DataFrame,
    folds: FoldSpec,
    seed: int,
    stratify: str | None,
    source: str,
    what: str = "rows",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, validation rows) for fold `folds.index` of a seeded K-fold partition
    (scikit-learn's StratifiedKFold on column `stratify`, else KFold). The same seed gives
    the same partition in every fold's run, so the K validation folds cover `df` once."""
    k = folds.k
    if len(df) < k:
        raise DataError(
            f"{source}: {len(df)} {what} are too few for data.folds.k={k}; lower the folds"
        )
    if stratify:
        counts = df[stratify].value_counts()
        short = counts[counts < k]
        if len(short):
            raise DataError(
                f"{source}: {k}-fold cross-validation needs at least {k} examples of each "
                f"class; {len(short)} class(es) have fewer: {_fmt_counts(short)}; lower the "
                "number of folds"
            )
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = list(splitter.split(df, df[stratify]))
    else:
        parts = list(KFold(n_splits=k, shuffle=True, random_state=seed).split(df))
    train_idx, val_idx = parts[folds.index]
    return (
        df.iloc[train_idx].reset_index(drop=True),
        df.iloc[val_idx].reset_index(drop=True),
    )


def sample_per_class(
    df: pd.DataFrame, column: str, k: int, seed: int, source: str, cap: bool = False
) -> pd.DataFrame:
    """Keep k rows per class, reproducibly by seed. Classes with fewer than k rows are an
    error naming them, or with `cap` keep all their rows (k larger than every class is
    always an error)."""
    counts = df[column].value_counts()
    short = counts[counts < k]
    if cap and k <= int(counts.max()):
        short = short.iloc[0:0]
    elif cap:
        raise DataError(
            f"{source}: data.k_per_class={k} is larger than the largest class "
            f"({int(counts.max())} examples of {counts.idxmax()!r})"
        )
    if len(short):
        raise DataError(
            f"{source}: data.k_per_class={k} but {len(short)} class(es) have fewer examples: "
            f"{_fmt_counts(short)}; lower k_per_class (largest possible: {int(counts.min())})"
        )
    parts = [
        g.sample(n=min(k, len(g)), random_state=seed)
        for _, g in df.groupby(column, sort=True, dropna=False)
    ]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _fmt_counts(counts: pd.Series, limit: int = 8) -> str:
    items = [f"{k!r}: {v}" for k, v in counts.sort_values().items()]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
