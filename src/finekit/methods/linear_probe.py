"""Method `linear_probe`: the whole backbone stays frozen; only the task head trains.

The cheapest rung of the ladder and the classic test of how good the pre-trained features
are for a task (Kornblith et al. 2019). Needs a higher learning rate than full fine-tuning.
"""

from __future__ import annotations

from torch import nn

from finekit.errors import ModelError
from finekit.methods.base import MethodContext, PlainExport, matches, register_method
from finekit.recipe import MethodConfig


class LinearProbeConfig(MethodConfig):
    name: str = "linear_probe"


class LinearProbe(PlainExport):
    def __init__(self, config: LinearProbeConfig) -> None:
        self.config = config

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        if not ctx.groups.head:
            raise ModelError("method linear_probe: this model family names no head to train")
        for name, p in model.named_parameters():
            p.requires_grad_(matches(name, ctx.groups.head))
        return model


register_method("linear_probe", LinearProbeConfig, LinearProbe)
