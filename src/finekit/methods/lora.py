"""Method `lora`: low-rank adapters through peft (Hu et al. 2021); the head trains fully.

Target modules default per architecture from peft's own table, else all linear layers.
Export: the adapter in adapter/ (peft format) and the merged plain model in model/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from torch import nn

from finekit.core.contracts import HeadSpec
from finekit.errors import RecipeError
from finekit.methods.base import MethodContext, Unscheduled, register_method
from finekit.models.base import ModelFamily
from finekit.recipe import MethodConfig

# head kind -> peft TaskType name (peft then knows the forward signature and the head).
PEFT_TASK_TYPES = {
    "sequence-classification": "SEQ_CLS",
    "causal-lm": "CAUSAL_LM",
    "token-classification": "TOKEN_CLS",
}


class LoraConfig(MethodConfig):
    name: str = "lora"
    # Rank: 4-16 for classification, 16-64 for generation; None = 8 for classification
    # heads, 16 for causal LMs.
    r: int | None = Field(None, ge=1)
    alpha: int = Field(16, gt=0)  # scaling alpha/r; 2*r is the common choice
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # Module names or "all-linear"; None = peft's default for the architecture (causal LMs:
    # "all-linear", attention and MLP, which adapts a domain far better than q/v alone).
    target_modules: list[str] | str | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = False  # weight-decomposed LoRA (Liu et al. 2024)
    use_rslora: bool = False  # rank-stabilised scaling alpha/sqrt(r)

    def auto_lr(self, task_lr: float) -> tuple[float, str, str] | None:
        # Adapters start at zero and are few: they take ~10x a full fine-tune's rate.
        return (
            max(2e-4, min(10 * task_lr, 5e-4)),
            f"LoRA adapters train at ~10x the full fine-tuning rate ({task_lr:g}), within "
            "2e-4..5e-4",
            "Hu et al. 2021 (2e-4..5e-4 for RoBERTa/GPT-2); recipes/support-bot.yaml (2e-4)",
        )


DEFAULT_RANK = {"causal-lm": 16}  # head kind -> rank when method.r is not set (else 8)


def default_targets(model_type: str | None, head_kind: str | None = None) -> list[str] | str:
    """peft's per-architecture table for classifiers; every linear layer for causal LMs."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table

    if head_kind == "causal-lm":
        return "all-linear"  # peft leaves the output layer (lm_head) out of "all-linear"
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


class Lora(Unscheduled):
    def __init__(self, config: LoraConfig) -> None:
        self.config = config

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        cfg = self.config
        targets = cfg.target_modules or default_targets(ctx.model_type, ctx.head.kind)
        rank = cfg.r if cfg.r is not None else DEFAULT_RANK.get(ctx.head.kind, 8)
        if cfg.target_modules is None and ctx.head.kind == "image-classification":
            targets = conv_targets(model, ctx.groups.head) or targets
        task_type = PEFT_TASK_TYPES.get(ctx.head.kind)
        # A new, random head must train fully and be saved with the adapter; an LM head
        # (causal or masked) is pre-trained and tied to the embeddings: it stays frozen.
        new_head = ctx.head.kind not in ("causal-lm", "masked-lm")
        peft_cfg = PeftLoraConfig(
            r=rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=targets,
            bias=cfg.bias,
            use_dora=cfg.use_dora,
            use_rslora=cfg.use_rslora,
            task_type=task_type,
            modules_to_save=(list(ctx.groups.head) or None) if new_head else None,
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


class DoraConfig(LoraConfig):
    """`dora`: LoRA with weight decomposition (Liu et al. 2024) — magnitude and direction
    trained apart; closer to full fine-tuning at LoRA's parameter count, ~2x slower steps."""

    name: str = "dora"
    use_dora: bool = True


register_method("dora", DoraConfig, Lora)
