"""Replay (rehearsal): a share of every epoch comes from a general corpus or an earlier
task's data, so the model keeps practising what it should not forget.

`read_replay` reads `data.replay.path` with the training data's readers and checks its
rows with the task (`task.read_inputs(..., with_labels=True)`: same columns, labels the
task knows, conversations for chat), before the run directory exists. `ReplayMix` is the
training set followed by the encoded pool; the loop's `EpochSampler` takes every training
example plus `per_epoch` draws from the pool, fresh and seeded per epoch (so a resumed run
replays the same batches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from finekit.core.contracts import EncodedDataset, Task
from finekit.data.splits import read_splits
from finekit.errors import DataError
from finekit.recipe import DataSpec


def read_replay(spec: DataSpec, task: Task) -> pd.DataFrame:
    """The replay rows, read like `data.train` and checked by the (prepared) task."""
    replay = spec.replay
    if replay is None:
        raise ValueError("data.replay is not set")
    path = replay.path
    if not path.startswith("hf://") and not Path(path).exists():
        raise DataError(f"data.replay.path: {path} does not exist")
    as_train = spec.model_copy(
        update={"train": path, "validation": None, "test": None, "format": replay.format}
    )
    try:
        df = read_splits(as_train, train_only=True).train
        df = task.read_inputs(df, path, with_labels=True)
    except DataError as e:
        raise DataError(f"data.replay: {e}") from None
    if len(df) == 0:
        raise DataError(f"data.replay: {path} holds no examples (empty replay corpus)")
    return df.reset_index(drop=True)


class ReplayMix(EncodedDataset):
    """Training examples (indices < n_train) followed by the replay pool. `replay` =
    (n_train, per_epoch) tells the sampler how many pool examples each epoch draws:
    per_epoch / (n_train + per_epoch) ~= ratio."""

    def __init__(self, train: EncodedDataset, pool: EncodedDataset, ratio: float) -> None:
        super().__init__(train.features + pool.features, train.lengths + pool.lengths)
        self.train, self.pool = train, pool  # items come from them (a train set may augment)
        self.n_train, self.n_pool = len(train), len(pool)
        self.per_epoch = max(1, round(ratio / (1.0 - ratio) * len(train)))
        self.replay = (self.n_train, self.per_epoch)
        weights = getattr(train, "sample_weights", None)  # balanced sampling of the task data
        if weights is not None:
            self.sample_weights = list(weights)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.train[i] if i < self.n_train else self.pool[i - self.n_train]

    def set_epoch(self, epoch: int) -> None:
        """Passed on to a training set that changes per epoch (text augmentation)."""
        if hasattr(self.train, "set_epoch"):
            self.train.set_epoch(epoch)

    def summary(self, path: str, ratio: float, epochs: float) -> dict[str, Any]:
        """run.json `data.replay`: the pool, the draws per epoch, and how many were seen."""
        return {
            "path": path,
            "ratio": ratio,
            "pool_examples": self.n_pool,
            "per_epoch": self.per_epoch,
            "share_per_epoch": round(self.per_epoch / (self.n_train + self.per_epoch), 4),
            # per_epoch for each full epoch, pro rata in a partial one
            "examples_seen": round(self.per_epoch * epochs),
        }
