"""Measured forward FLOPs per training example (PyTorch's own op-level counter).

The 6·N·T rule (Kaplan et al. 2020) prices a training token of a transformer; it has no
meaning for an image or a clip, where the cost is set by the resolution, not by the
parameter count (EfficientNet-Lite0: ~4.7M parameters, ~0.8 GFLOPs a 224 px image).
For such tasks finekit counts the FLOPs of one real forward pass with
`torch.utils.flop_counter.FlopCounterMode` and prices training from it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


def forward_flops_per_example(
    task: Any,
    model: nn.Module,
    data: torch.utils.data.Dataset,
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    n: int = 2,
) -> float | None:
    """FLOPs of the task's evaluation forward pass (`eval_step`: no mixup or other
    training-only work), per example, on the first `n` examples of `data` — pass a split
    that is not augmented (no gradients, model mode unchanged); None where it cannot be
    counted."""
    from torch.utils.flop_counter import FlopCounterMode

    size = len(data)  # type: ignore[arg-type]
    if size == 0:
        return None
    k = min(n, size)
    device = next(model.parameters()).device
    was_training = model.training
    # Reading examples may draw random numbers (augmentation): the run's streams must be
    # exactly as if nothing had been measured.
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            batch = {key: v.to(device) for key, v in collate([data[i] for i in range(k)]).items()}
            model.eval()
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                task.eval_step(model, batch)
        return counter.get_total_flops() / k
    except Exception as e:  # a cost estimate must never stop a run
        log.info("forward FLOPs not counted (%s: %s)", type(e).__name__, e)
        return None
    finally:
        model.train(was_training)
        random.setstate(py_state)
        np.random.set_state(np_state)


def training_flops(
    forward_per_example: float, examples: int, trainable: int, total: int, method: str
) -> float:
    """Training FLOPs from a measured forward pass: forward (F), activation gradients
    (~F, skipped when nothing below the head trains) and weight gradients (~F scaled by
    the trainable share) for every example seen — the same split as the 6·N·T rule."""
    backprop_body = method not in ("linear_probe",)
    share = trainable / total if total else 1.0
    return float(examples) * forward_per_example * (1 + (1 if backprop_body else 0) + share)
