"""`finekit check`: everything a run would verify before training, and one training step,
without training or writing anything.

The data is read and checked, the model loaded, the `auto` settings resolved (and shown with
their reasons), the method applied, one batch encoded and one forward and backward pass run
(the loss must be finite and some trainable weight must receive a gradient).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from finekit.errors import DataError, ModelError
from finekit.recipe import Recipe
from finekit.recipe.auto import Resolution, concrete
from finekit.run import stages


@dataclass
class CheckResult:
    recipe: Recipe  # `auto` resolved
    auto: Resolution
    rows: dict[str, int]  # examples per split
    loss: float
    grad_norm: float
    trainable: int
    total: int
    seconds: float

    def lines(self) -> list[str]:
        r = self.recipe
        out = [
            "data          : "
            + ", ".join(f"{k} {v:,}" for k, v in self.rows.items())
            + f" ({r.task.name})",
            f"model         : {r.model.path} ({self.total:,} parameters; {self.trainable:,} "
            f"trainable with {r.method.name})",
            f"one step      : loss {self.loss:.4f}, gradient norm {self.grad_norm:.4g} "
            f"({self.seconds:.1f} s in all)",
            "settings      :",
        ]
        out += [f"  {line}" for line in self.auto.lines()]
        explicit = [
            f"  {k} = {v}"
            for k, v in {
                "training.epochs": r.training.epochs,
                "training.lr": r.training.lr,
                "training.batch_size": r.training.batch_size,
            }.items()
            if k not in self.auto.chosen and k not in self.auto.overridden
        ]
        return out + explicit


def check(r: Recipe) -> CheckResult:
    """Data checks, model load, `auto` resolution and one forward/backward step."""
    from finekit.methods import count_parameters

    t0 = time.perf_counter()
    s = stages.setup(r)
    r = s.recipe
    splits = s.prepared.splits
    rows = {name: len(df) for name, df in splits.items()}
    n = min(len(splits.train), concrete(r.training.batch_size, "training.batch_size"))
    if n == 0:
        raise DataError(f"{r.data.train}: no training examples after the checks")
    enc = s.task.encode(splits.train.iloc[:n], s.loaded.processor, "check")
    # One batch (an LM corpus row is a whole document of many blocks: take the first few).
    items = [enc[i] for i in range(min(n, len(enc)))]
    batch: dict[str, Any] = s.task.collator(s.loaded.processor)(items)
    model = s.model
    model.train()
    loss = s.task.loss(model, batch)
    if not torch.isfinite(loss):
        raise ModelError(f"one training step on {r.model.path}: the loss is {loss.item()}")
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    norm = math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads))
    if not grads or norm == 0.0:
        raise ModelError(
            f"one training step on {r.model.path} with method {r.method.name}: no trainable "
            "weight received a gradient"
        )
    model.zero_grad(set_to_none=True)
    trainable, total = count_parameters(model)
    return CheckResult(
        r, s.auto, rows, float(loss.detach()), norm, trainable, total, time.perf_counter() - t0
    )
