"""Mixup on features: sentence-level mixup for text classifiers (Guo, Mao & Zhang 2019,
"Augmenting Data with Mixup for Sentence Classification: An Empirical Study").

Words cannot be averaged, so the mix happens where a sentence is one vector: the input of
the classification head (BERT's pooled [CLS], DistilBERT's pre_classifier input). A batch
is mixed with its own shuffle, h = lam * h + (1 - lam) * h[perm], and the loss is the same
mix of the two cross-entropies. lam ~ Beta(alpha, alpha), one per batch (Zhang et al.'s
implementation).

Randomness: torch's global RNG, which the loop seeds and checkpoints (like image
augmentation and MLM masking), so a resumed run draws the same mixes. Only the training
loss draws; evaluation never installs the hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from finekit.data.augment import MIXUP_ALPHA, resolve_augment
from finekit.errors import ModelError


@dataclass
class MixDraw:
    lam: float  # weight of each example itself; 1 - lam goes to its partner
    perm: torch.Tensor  # (B,) partner of each example (a shuffle of the batch)


class FeatureMixup:
    """Draws a mix per training batch (`draw`) and applies it at the head input
    (`applied`: forward pre-hooks on the head modules for one forward pass)."""

    def __init__(self, prob: float, alpha: float) -> None:
        self.prob, self.alpha = prob, alpha

    @classmethod
    def from_spec(cls, spec: Any) -> FeatureMixup | None:
        a = resolve_augment(spec, "text")
        if not a["mixup"]:
            return None
        return cls(a["mixup"], a["mixup_alpha"] or MIXUP_ALPHA)

    def draw(self, batch_size: int) -> MixDraw | None:
        """None (this batch stays plain, probability 1 - prob) or a mix; CPU draws from the
        global generator, so the device never changes the stream."""
        if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
            return None
        a = torch.tensor(float(self.alpha))
        lam = float(torch.distributions.Beta(a, a).sample())
        return MixDraw(lam, torch.randperm(batch_size))

    @contextlib.contextmanager
    def applied(self, modules: list[nn.Module], draw: MixDraw) -> Iterator[None]:
        """Within the block, the first head module called mixes its input (B, ...) once;
        a forward pass that never reaches the head is an error, not a silent no-op."""
        done = [False]

        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if done[0] or not args or not torch.is_tensor(args[0]):
                return None
            done[0] = True
            x = args[0]
            mixed = draw.lam * x + (1.0 - draw.lam) * x[draw.perm.to(x.device)]
            return (mixed, *args[1:])

        handles = [m.register_forward_pre_hook(hook) for m in modules]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        if not done[0]:
            raise ModelError(
                "data.augment.mixup: the classification head never received features to "
                "mix (its modules were not called); this model cannot use text mixup"
            )
