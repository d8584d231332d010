"""The task contract: how raw rows become batches, what the loss is, what is measured.

A task never touches devices, precision or distribution (the loop owns those) and never
knows which model family it runs on beyond the `HeadSpec` it asks for. Adding a task is
one module that implements `Task` and calls `register_task` once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd
import torch
from torch import nn

from finekit.data.splits import Splits
from finekit.recipe import Recipe, TaskConfig
from finekit.registry import Registry


@dataclass
class HeadSpec:
    """What the model room must attach on top of the backbone for this task."""

    kind: str  # "sequence-classification", "causal-lm", "masked-lm", "image-classification"...
    num_labels: int | None = None
    id2label: dict[int, str] | None = None


@dataclass
class Prepared:
    """The task's view of the data after validation, label mapping and sampling."""

    splits: Splits
    info: dict[str, Any] = field(default_factory=dict)  # counts, labels... (goes to run.json)


class EncodedDataset(torch.utils.data.Dataset):
    """A map-style dataset of already-encoded examples, with lengths for length grouping."""

    def __init__(self, features: list[dict[str, Any]], lengths: Sequence[int] | None = None):
        self.features = features
        self.lengths = list(lengths) if lengths is not None else [1] * len(features)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


Batch = dict[str, torch.Tensor]


@runtime_checkable
class Task(Protocol):
    """What every task implements. `processor` is whatever the model family loaded
    (a tokenizer, an image processor, a feature extractor)."""

    name: str

    @property
    def config(self) -> TaskConfig: ...

    def prepare(self, splits: Splits, recipe: Recipe) -> Prepared:
        """Check columns/values, map labels, hold out and sample. Raise DataError early."""
        ...

    def head(self) -> HeadSpec:
        """The head the model room attaches (valid after `prepare`)."""
        ...

    size_unit: str  # what `data.max_train_samples` and `finekit compare --sizes` count

    def train_size(self, info: dict[str, Any]) -> int | None:
        """The training examples in `size_unit`s, read from `prepare`'s info or a run's
        `data` record; None while unknown (token blocks exist only after `encode`)."""
        ...

    def encode(self, df: pd.DataFrame, processor: Any, split: str) -> EncodedDataset:
        """Turn rows into model features (tokens, pixels...), counting truncation."""
        ...

    def collator(self, processor: Any) -> Callable[[list[dict[str, Any]]], Batch]:
        """Make padded tensors from a list of features (dynamic padding)."""
        ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The training loss of one batch (a scalar tensor)."""
        ...

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-example outputs of one batch (e.g. predictions, labels, probabilities)."""
        ...

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Metrics from the concatenated outputs of a whole split."""
        ...

    def artifacts(
        self,
        outputs: dict[str, torch.Tensor],
        out_dir: Path,
        split: str,
        rows: pd.DataFrame | None = None,
    ) -> list[str]:
        """Write plots/tables for a split (confusion matrix, per-example predictions of
        `rows`, the split's raw rows in order); return the file names."""
        ...

    def state(self) -> dict[str, Any]:
        """What inference needs to rebuild the task without training data (e.g. labels)."""
        ...

    def load_state(self, state: dict[str, Any]) -> None: ...

    def read_inputs(self, df: pd.DataFrame, source: str, with_labels: bool = False) -> pd.DataFrame:
        """Check an inference/eval file has the input columns (and, for evaluation,
        targets the trained model knows); return it."""
        ...

    def predict(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame, batch_size: int
    ) -> list[dict[str, Any]]:
        """Predictions for raw rows (inference, no labels needed)."""
        ...


@dataclass
class TaskEntry:
    config_cls: type[TaskConfig]
    factory: Callable[[TaskConfig], Task]


TASKS: Registry[TaskEntry] = Registry("task")


def register_task(name: str, config_cls: type[TaskConfig], factory: Callable[..., Task]) -> None:
    """Make a task available to recipes as `task: {name: <name>, ...}`."""
    TASKS.register(name, TaskEntry(config_cls=config_cls, factory=factory))


def build_task(config: TaskConfig) -> Task:
    return TASKS.get(config.name).factory(config)
