"""Method `prompt_tuning`: soft prompts through peft (Lester et al. 2021) — `num_virtual_tokens`
trained input embeddings prepended to every sequence; the whole model stays frozen (a
classifier's new head trains too, as with LoRA). The smallest footprint of all methods
(20 x hidden parameters), at the cost of a high learning rate (Lester et al.: 0.3; 1e-2 to
3e-1 here) and more steps than LoRA.

For causal LMs (`causal_lm`, `chat`) and text sequence classifiers only: virtual tokens are
input embeddings, which image models and the masked-LM objective have no use for.

Export: virtual tokens cannot be merged into weights. `adapter/` (peft format: the prompt,
plus the head for classifiers) is always written, `model/` is a copy of the frozen base
model (with the tokenizer) so that `load_run` loads base + adapter offline, whatever
happens to the original base path (a hub cache, a moved folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from torch import nn

from finekit.core.contracts import HeadSpec
from finekit.errors import RecipeError
from finekit.methods.base import MethodContext, Unscheduled, register_method
from finekit.methods.lora import PEFT_TASK_TYPES
from finekit.models.base import ModelFamily
from finekit.recipe import MethodConfig, Recipe

SUPPORTED_HEADS = ("causal-lm", "sequence-classification")


class PromptTuningConfig(MethodConfig):
    name: str = "prompt_tuning"
    keeps_position_ids: ClassVar[bool] = False  # peft drops them for virtual tokens

    def advice(self, recipe: Recipe) -> list[str]:
        # Soft prompts learn at 1e-2..3e-1 (Lester et al. 2021); at encoder rates they barely move.
        lr = recipe.training.lr
        if isinstance(lr, float) and lr < 1e-3:  # `auto` picks auto_lr's rate
            return [
                f"method prompt_tuning with training.lr={lr:g}: soft prompts "
                "need ~1e-2 to 3e-1; set training.lr"
            ]
        return []

    def auto_lr(self, task_lr: float) -> tuple[float, str, str] | None:
        return (
            3e-2,
            "prompt tuning trains only the soft prompt (and head): rates of 1e-2..3e-1",
            "Lester et al. 2021 (0.3 with Adafactor); PEFT's prompt-tuning guide (3e-2, AdamW)",
        )

    # Prompt length: Lester et al. found 20 tokens close to the best for large models; more
    # helps small models a little. Each virtual token lengthens every sequence by one.
    num_virtual_tokens: int = Field(20, ge=1, le=512)
    # random: small random embeddings; text: the embeddings of `init_text`'s tokens (repeated
    # or cut to num_virtual_tokens), e.g. a task description — converges faster.
    init: Literal["random", "text"] = "random"
    init_text: str | None = None

    @model_validator(mode="after")
    def _init_text(self) -> PromptTuningConfig:
        if self.init == "text" and not (self.init_text or "").strip():
            raise ValueError("method.init=text needs method.init_text (e.g. a task description)")
        if self.init == "random" and self.init_text is not None:
            raise ValueError("method.init_text is only used with method.init=text")
        return self


def check_head(kind: str) -> None:
    """Refuse heads without a place for virtual tokens, naming the field and the head."""
    if kind not in SUPPORTED_HEADS:
        raise RecipeError(
            f"method prompt_tuning does not support head kind {kind!r} (virtual tokens are "
            f"prepended input embeddings; supported: {', '.join(SUPPORTED_HEADS)}, i.e. "
            "causal_lm, chat and text classify); choose another method, e.g. lora"
        )


def _unwrap_saved_modules(model: nn.Module) -> list[tuple[nn.Module, str, Any]]:
    """Replace peft's ModulesToSaveWrapper children by their original (base) module, in
    place; returns what to put back."""
    from peft.utils import ModulesToSaveWrapper

    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ModulesToSaveWrapper):
                swapped.append((parent, name, child))
                setattr(parent, name, child.original_module)
    return swapped


class PromptTuning(Unscheduled):
    def __init__(self, config: PromptTuningConfig) -> None:
        self.config = config

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        from peft import PromptTuningConfig as PeftPromptTuningConfig
        from peft import PromptTuningInit, get_peft_model

        check_head(ctx.head.kind)
        cfg = self.config
        text = cfg.init == "text"
        peft_cfg = PeftPromptTuningConfig(
            task_type=PEFT_TASK_TYPES[ctx.head.kind],
            num_virtual_tokens=cfg.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=cfg.init_text if text else None,
            # peft reads the init text's tokens with the model's own tokenizer (local path).
            tokenizer_name_or_path=getattr(model, "name_or_path", None) if text else None,
            # A classifier's new, random head trains fully and is saved with the adapter.
            modules_to_save=(
                list(ctx.groups.head) or None
                if ctx.head.kind == "sequence-classification"
                else None
            ),
        )
        return get_peft_model(model, peft_cfg)

    def export(
        self,
        model: nn.Module,
        family: ModelFamily,
        processor: Any,
        head: HeadSpec,
        run_dir: Path,
        keep_adapter: bool,
    ) -> dict[str, str]:
        # The adapter is the trained model here: written whatever output.keep_adapter says.
        model.save_pretrained(run_dir / "adapter")  # type: ignore[operator]
        base = model.get_base_model()  # type: ignore[operator]
        swapped = _unwrap_saved_modules(base)  # the base's own head, untouched
        try:
            family.save(base, processor, run_dir / "model", head)
        finally:
            for parent, name, wrapper in swapped:
                setattr(parent, name, wrapper)
        source = model.peft_config["default"].base_model_name_or_path  # type: ignore[index,union-attr,operator]
        return {
            "adapter": "adapter",
            "model": "model",
            "model_is": "base: load with adapter/ (virtual tokens cannot be merged)",
            "base_model": str(source or ""),
        }


register_method("prompt_tuning", PromptTuningConfig, PromptTuning)
