"""Run a task's `eval_step` over a data set and gather the outputs (no gradients)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from finekit.core.contracts import Batch, EncodedDataset, Task


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (least padding); order is deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def run_outputs(
    task: Task,
    model: nn.Module,
    dataset: EncodedDataset,
    collate: Callable[[list[dict[str, Any]]], Batch],
    batch_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    device: torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Outputs of `task.eval_step` for every example, in the dataset's order.

    `autocast` is a factory of a fresh context per batch (e.g. `accelerator.autocast`).
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    parts: list[dict[str, torch.Tensor]] = []
    index: list[int] = []
    try:
        for idx in length_sorted_batches(dataset.lengths, batch_size):
            batch = collate([dataset[i] for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast() if autocast else contextlib.nullcontext():
                out = task.eval_step(model, batch)
            parts.append(
                {
                    k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                    for k, v in out.items()
                }
            )
            index.extend(idx)
    finally:
        model.train(was_training)
    if not parts:
        return {}
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    inverse = torch.empty(len(index), dtype=torch.long)
    inverse[torch.tensor(index)] = torch.arange(len(index))
    return {k: v[inverse] for k, v in cat.items()}
