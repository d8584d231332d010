"""Regularisers toward the pre-trained weights (not toward zero).

L2-SP (Li, Grandvalet & Davoine 2018): alpha/2 * sum ||w - w0||^2 over the pre-trained
parameters that train; the new head is left to ordinary weight decay. It lets the body move
where the task needs it while pulling it back to what the base model knew: less forgetting
than full fine-tuning at nearly the same accuracy.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from finekit.models.base import LayerGroups


class Regulariser(Protocol):
    name: str

    def penalty(self) -> torch.Tensor:
        """A scalar added to the task loss at every step."""
        ...


class L2SP:
    name = "l2sp"

    def __init__(self, model: nn.Module, alpha: float, groups: LayerGroups) -> None:
        self.alpha = alpha
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
