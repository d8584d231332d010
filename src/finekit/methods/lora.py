"""Method `lora`: low-rank adapters through peft (Hu et al. 2021); the head trains fully.

Target modules default per architecture from peft's own table, else all linear layers.
Export: the adapter in adapter/ (peft format) and the merged plain model in model/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from torch import nn

from finekit.errors import RecipeError
from finekit.methods.base import MethodContext, register_method
from finekit.models.base import ModelFamily
from finekit.recipe import MethodConfig
from finekit.tasks.base import HeadSpec

# head kind -> peft TaskType name (peft then knows the forward signature and the head).
PEFT_TASK_TYPES = {
    "sequence-classification": "SEQ_CLS",
    "causal-lm": "CAUSAL_LM",
    "token-classification": "TOKEN_CLS",
}


class LoraConfig(MethodConfig):
    name: str = "lora"
    r: int = Field(8, ge=1)  # rank: 4-16 for classification, 16-64 for generation
    alpha: int = Field(16, gt=0)  # scaling alpha/r; 2*r is the common choice
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # Module names or "all-linear"; None = peft's default for the architecture.
    target_modules: list[str] | str | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = False  # weight-decomposed LoRA (Liu et al. 2024)
    use_rslora: bool = False  # rank-stabilised scaling alpha/sqrt(r)


def default_targets(model_type: str | None) -> list[str] | str:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table

    return list(table[model_type]) if model_type in table else "all-linear"


def conv_targets(model: nn.Module, head: list[str]) -> list[str]:
    """CNNs: LoRA on every dense (groups=1) convolution and linear layer outside the head;
    peft adapts Conv2d with a low-rank pair of convolutions. Depthwise convolutions have
    few weights already (and no low-rank form): they stay frozen."""
    names = []
    for name, m in model.named_modules():
        if any(name == h or name.startswith(h + ".") for h in head):
            continue
        if (isinstance(m, nn.Conv2d) and m.groups == 1) or isinstance(m, nn.Linear):
            names.append(name)
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return sorted(names) if has_conv else []


class Lora:
    def __init__(self, config: LoraConfig) -> None:
        self.config = config

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        cfg = self.config
        targets = cfg.target_modules or default_targets(ctx.model_type)
        if cfg.target_modules is None and ctx.head.kind == "image-classification":
            targets = conv_targets(model, ctx.groups.head) or targets
        task_type = PEFT_TASK_TYPES.get(ctx.head.kind)
        peft_cfg = PeftLoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=targets,
            bias=cfg.bias,
            use_dora=cfg.use_dora,
            use_rslora=cfg.use_rslora,
            task_type=task_type,
            # The head is new (random): it must train fully and be saved with the adapter.
            modules_to_save=list(ctx.groups.head) or None,
        )
        try:
            return get_peft_model(model, peft_cfg)
        except ValueError as e:
            raise RecipeError(f"method.target_modules {targets!r}: {e}") from None

    def export(
        self,
        model: nn.Module,
        family: ModelFamily,
        processor: Any,
        head: HeadSpec,
        run_dir: Path,
        keep_adapter: bool,
    ) -> dict[str, str]:
        out = {}
        if keep_adapter:
            model.save_pretrained(run_dir / "adapter")  # type: ignore[operator]
            out["adapter"] = "adapter"
        merged = model.merge_and_unload()  # type: ignore[operator]
        family.save(merged, processor, run_dir / "model", head)
        out["model"] = "model"
        return out


register_method("lora", LoraConfig, Lora)
