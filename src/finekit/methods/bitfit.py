"""Method `bitfit`: only the bias terms (and the new head) train (Ben Zaken et al. 2022).

About 0.1% of an encoder's parameters; close to full fine-tuning on small data, with the
pre-trained weights untouched (little forgetting).
"""

from __future__ import annotations

from torch import nn

from finekit.errors import ModelError
from finekit.methods.base import MethodContext, PlainExport, matches, register_method
from finekit.recipe import MethodConfig


class BitFitConfig(MethodConfig):
    name: str = "bitfit"

    def auto_lr(self, task_lr: float) -> tuple[float, str, str] | None:
        return (
            1e-3,
            "BitFit trains only the biases: rates of 1e-4..1e-3, the large end on small sets",
            "Ben Zaken et al. 2022",
        )


class BitFit(PlainExport):
    def __init__(self, config: BitFitConfig) -> None:
        self.config = config

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        n_bias = 0
        for name, p in model.named_parameters():
            is_bias = name.endswith(".bias") or name == "bias"
            n_bias += is_bias
            p.requires_grad_(is_bias or matches(name, ctx.groups.head))
        if n_bias == 0:
            raise ModelError("method bitfit: this model has no bias parameters to train")
        return model


register_method("bitfit", BitFitConfig, BitFit)
