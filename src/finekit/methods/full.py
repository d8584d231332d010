"""Method `full`: every parameter trains (the strongest adapter, the most forgetting)."""

from __future__ import annotations

from torch import nn

from finekit.methods.base import MethodContext, PlainExport, register_method
from finekit.recipe import MethodConfig


class FullConfig(MethodConfig):
    name: str = "full"


class Full(PlainExport):
    def __init__(self, config: FullConfig) -> None:
        self.config = config

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model


register_method("full", FullConfig, Full)
