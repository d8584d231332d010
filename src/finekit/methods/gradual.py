"""Method `gradual_unfreeze`: the head trains first, then one more block every K epochs
(or steps), top-down, as in ULMFiT (Howard & Ruder 2018).

Lower layers hold the most general features: unfreezing them last, after the head has
settled, limits forgetting. Every parameter that will ever train is in the optimizer from
the start (AdamW skips parameters without gradients), and which blocks are unfrozen is a
function of the step alone, so the schedule survives `--resume` by construction.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pydantic import Field, model_validator
from torch import nn

from finekit.errors import ModelError
from finekit.methods.base import MethodContext, PlainExport, matches, register_method
from finekit.recipe import MethodConfig

log = logging.getLogger(__name__)


class GradualUnfreezeConfig(MethodConfig):
    name: str = "gradual_unfreeze"
    every_epochs: float | None = Field(1.0, gt=0)  # unfreeze one more block per epoch...
    every_steps: int | None = Field(None, ge=1)  # ...or per N optimizer steps (wins if set)
    embeddings: bool = False  # unfreeze the embeddings too, after the lowest block

    @model_validator(mode="after")
    def _one_clock(self) -> GradualUnfreezeConfig:
        if self.every_epochs is None and self.every_steps is None:
            raise ValueError("set every_epochs or every_steps")
        return self


class Unfreezer:
    """The loop callback: sets requires_grad for the blocks unfrozen by this step."""

    def __init__(self, model: nn.Module, order: list[list[str]], cfg: GradualUnfreezeConfig):
        self.model, self.order, self.cfg = model, order, cfg
        self.active = -1

    def _stage(self, state: Any) -> int:
        if self.cfg.every_steps is not None:
            period = self.cfg.every_steps
        else:
            assert self.cfg.every_epochs is not None
            period = max(1, math.ceil(self.cfg.every_epochs * state.steps_per_epoch))
        return min(len(self.order) - 1, state.progress.step // period)

    def _apply(self, state: Any) -> None:
        stage = self._stage(state)
        if stage == self.active:
            return
        self.active = stage
        open_prefixes = [p for group in self.order[: stage + 1] for p in group]
        for name, p in self.model.named_parameters():
            p.requires_grad_(any(f".{q}." in f".{name}." for q in open_prefixes))
        log.info(
            "gradual unfreezing: stage %d/%d at step %d",
            stage + 1,
            len(self.order),
            state.progress.step,
        )

    def on_train_begin(self, state: Any, control: Any) -> None:
        self._apply(state)

    def on_step_end(self, state: Any, control: Any) -> None:
        self._apply(state)


class GradualUnfreeze(PlainExport):
    def __init__(self, config: GradualUnfreezeConfig) -> None:
        self.config = config
        self.order: list[list[str]] = []

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        g = ctx.groups
        if not g.head or not g.layers:
            raise ModelError("method gradual_unfreeze: the model family names no head/blocks")
        # Stage 0: the head and everything that is neither a block nor an embedding
        # (pooler, final norm); then blocks top-down; then (optionally) the embeddings.
        others = [n for n, _ in model.named_parameters() if not matches(n, g.layers + g.embeddings)]
        self.order = [others, *[[layer] for layer in reversed(g.layers)]]
        if self.config.embeddings:
            self.order.append(list(g.embeddings))
        ever = [p for group in self.order for p in group]
        for name, p in model.named_parameters():
            p.requires_grad_(any(f".{q}." in f".{name}." or name == q for q in ever))
        return model

    def callbacks(self, model: nn.Module) -> list[Any]:
        return [Unfreezer(model, self.order, self.config)]

    def schedule_steps(self, steps_per_epoch: int) -> int:
        """Steps until the last block opens (a schedule longer than training is a warning)."""
        period = self.config.every_steps or max(
            1, math.ceil((self.config.every_epochs or 1) * steps_per_epoch)
        )
        return period * (len(self.order) - 1)


register_method("gradual_unfreeze", GradualUnfreezeConfig, GradualUnfreeze)
