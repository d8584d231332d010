"""Method `ia3`: (IA)^3 through peft (Liu et al. 2022) — learned per-channel scales on the
attention keys/values and the feed-forward activations; ~10x fewer parameters than LoRA.

Targets default per architecture from peft's own tables. Export: the adapter in adapter/
and the merged plain model in model/, like `lora`.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from finekit.errors import RecipeError
from finekit.methods.base import MethodContext, register_method
from finekit.methods.lora import PEFT_TASK_TYPES, Lora
from finekit.recipe import MethodConfig


class IA3Config(MethodConfig):
    name: str = "ia3"
    # Module names; None = peft's table for the architecture (BERT: key, value, output.dense).
    target_modules: list[str] | None = None
    # Which of the targets are feed-forward (scaled on their input, not output).
    feedforward_modules: list[str] | None = None
    init_ia3_weights: bool = Field(True)  # start at identity: the base model's outputs

    def auto_lr(self, task_lr: float) -> tuple[float, str, str] | None:
        return (
            3e-3,
            "IA3 learns only rescaling vectors: a rate of 3e-3",
            "Liu et al. 2022 (T-Few)",
        )


class IA3(Lora):
    """Shares LoRA's export (adapter + merged model); only `apply` differs."""

    def __init__(self, config: IA3Config) -> None:  # type: ignore[override]
        self.config = config  # type: ignore[assignment]

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        from peft import IA3Config as PeftIA3Config
        from peft import get_peft_model
        from peft.utils import (
            TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as ff_table,
        )
        from peft.utils import (
            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as table,
        )

        cfg: IA3Config = self.config  # type: ignore[assignment]
        targets = cfg.target_modules or table.get(ctx.model_type or "")
        if not targets:
            raise RecipeError(
                f"method ia3: peft has no default targets for model type {ctx.model_type!r}; "
                "set method.target_modules and method.feedforward_modules"
            )
        ff = cfg.feedforward_modules
        if ff is None:
            ff = [m for m in ff_table.get(ctx.model_type or "", []) if m in targets]
        peft_cfg = PeftIA3Config(
            target_modules=targets,
            feedforward_modules=ff,
            task_type=PEFT_TASK_TYPES.get(ctx.head.kind),
            init_ia3_weights=cfg.init_ia3_weights,
            modules_to_save=list(ctx.groups.head) or None,
        )
        try:
            return get_peft_model(model, peft_cfg)
        except ValueError as e:
            raise RecipeError(f"method.target_modules {targets!r}: {e}") from None


register_method("ia3", IA3Config, IA3)
