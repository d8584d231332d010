"""Regularisers toward the pre-trained weights (not toward zero).

L2-SP (Li, Grandvalet & Davoine 2018): alpha/2 * sum ||w - w0||^2 over the pre-trained
parameters that train; the new head is left to ordinary weight decay. It lets the body move
where the task needs it while pulling it back to what the base model knew: less forgetting
than full fine-tuning at nearly the same accuracy. EWC (Kirkpatrick et al. 2017) weighs
each weight's pull by the base model's Fisher information: weights the base relies on stay,
the others are free to move.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import nn

from finekit.errors import ModelError
from finekit.models.base import LayerGroups

log = logging.getLogger(__name__)


class Regulariser(Protocol):
    name: str
    alpha: float
    info: dict[str, Any]  # what run.json records beside alpha and the distance

    def distance(self) -> float:
        """||w - w0|| over the regularised parameters (how far the body moved)."""
        ...

    def penalty(self) -> torch.Tensor:
        """A scalar added to the task loss at every step."""
        ...


class L2SP:
    name = "l2sp"

    def __init__(self, model: nn.Module, alpha: float, groups: LayerGroups) -> None:
        self.alpha = alpha
        self.info: dict[str, Any] = {}
        head = groups.head
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = [
            (p, p.detach().clone())
            for n, p in model.named_parameters()
            if p.requires_grad and not any(f".{h}." in f".{n}." for h in head)
        ]

    def penalty(self) -> torch.Tensor:
        if not self.pairs:
            return torch.zeros(())
        if self.pairs[0][1].device != self.pairs[0][0].device:  # once, after device placement
            self.pairs = [(p, p0.to(p.device)) for p, p0 in self.pairs]
        total = sum((p.float() - p0.float()).pow(2).sum() for p, p0 in self.pairs)
        return 0.5 * self.alpha * total  # type: ignore[return-value]

    def distance(self) -> float:
        """||w - w0|| over the regularised parameters (how far the body moved)."""
        with torch.no_grad():
            return (
                float(
                    sum((p.float() - p0.to(p.device).float()).pow(2).sum() for p, p0 in self.pairs)
                    ** 0.5
                )
                if self.pairs
                else 0.0
            )


class EWC:
    """Elastic weight consolidation (Kirkpatrick et al. 2017): L2-SP with each weight's pull
    scaled by how much the base model's loss depends on it.

    penalty = alpha/2 * sum_i F_i (w_i - w0_i)^2 over the same parameters as L2SP, with F the
    diagonal empirical Fisher of the *base* model (`diagonal_fisher`) divided by its mean:
    weights of average importance feel alpha as under L2-SP, important ones more, weights
    the reference data never uses nothing.
    """

    name = "ewc"

    def __init__(
        self,
        model: nn.Module,
        alpha: float,
        groups: LayerGroups,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        batches: Iterable[dict[str, Any]],
        source: str = "",
    ) -> None:
        self.alpha = alpha
        head = groups.head
        params = [
            p
            for n, p in model.named_parameters()
            if p.requires_grad and not any(f".{h}." in f".{n}." for h in head)
        ]
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = [
            (p, p.detach().clone()) for p in params
        ]
        raw, n_batches = diagonal_fisher(model, loss_fn, params, batches)
        total = sum(float(f.double().sum()) for f in raw)
        count = sum(f.numel() for f in raw)
        mean = total / max(1, count)
        if not math.isfinite(mean):
            raise ModelError(
                "training.ewc: the base model's loss gives non-finite gradients on the Fisher "
                "reference batches (check the data, or use training.l2sp)"
            )
        if mean <= 0.0:
            log.warning("training.ewc: the Fisher is zero everywhere; EWC acts as L2-SP here")
            self.fisher = [torch.ones_like(f) for f in raw]
        else:
            self.fisher = [f / mean for f in raw]
        self.info: dict[str, Any] = {
            "fisher_batches": n_batches,
            "fisher_source": source,
            "fisher_mean_before_normalising": mean,
            "fisher_max": max((float(f.max()) for f in self.fisher), default=0.0),
        }

    def penalty(self) -> torch.Tensor:
        if not self.pairs:
            return torch.zeros(())
        p, p0 = self.pairs[0]
        if p0.device != p.device:  # once, after device placement
            self.pairs = [(q, q0.to(q.device)) for q, q0 in self.pairs]
            self.fisher = [
                f.to(q.device) for f, (q, _) in zip(self.fisher, self.pairs, strict=True)
            ]
        total = sum(
            (f * (q.float() - q0.float()).pow(2)).sum()
            for f, (q, q0) in zip(self.fisher, self.pairs, strict=True)
        )
        return 0.5 * self.alpha * total  # type: ignore[return-value]

    def distance(self) -> float:
        """||w - w0|| over the regularised parameters (unweighted, comparable with L2SP)."""
        with torch.no_grad():
            return (
                float(
                    sum((q.float() - q0.to(q.device).float()).pow(2).sum() for q, q0 in self.pairs)
                    ** 0.5
                )
                if self.pairs
                else 0.0
            )


def diagonal_fisher(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    params: list[nn.Parameter],
    batches: Iterable[dict[str, Any]],
) -> tuple[list[torch.Tensor], int]:
    """Mean over `batches` of the squared gradient of `loss_fn(model, batch)` for each of
    `params` (fp32, on their device), and the number of batches.

    Runs in eval mode (no dropout) on the model's own device; gradients come from
    `torch.autograd.grad`, so no `.grad` is filled, and the model's grads are left None.
    A task loss that draws random numbers (image augmentation) draws from a forked RNG.
    """
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    if not params:
        return fisher, 0
    device = params[0].device
    was_training = model.training
    cuda: list[int] = []
    if device.type == "cuda":
        cuda = [torch.cuda.current_device() if device.index is None else device.index]
    n = 0
    model.eval()
    try:
        with torch.random.fork_rng(devices=cuda):
            for batch in batches:
                on_device = {
                    k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
                }
                loss = loss_fn(model, on_device)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for f, g in zip(fisher, grads, strict=True):
                    if g is not None:
                        f.add_(g.detach().float().pow(2))
                n += 1
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return [f / max(1, n) for f in fisher], n
