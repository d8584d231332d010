"""Method `freeze`: the embeddings, the first N blocks and/or named parameters stay fixed.

Freezing the lower layers keeps the general features the base model learnt (less
forgetting, less overfitting on tiny data, faster steps: no backward below the cut).
"""

from __future__ import annotations

import re

from pydantic import Field
from torch import nn

from finekit.errors import RecipeError
from finekit.methods.base import MethodContext, PlainExport, matches, register_method
from finekit.recipe import MethodConfig


class FreezeConfig(MethodConfig):
    name: str = "freeze"
    embeddings: bool = True  # token/position embeddings (or an image stem)
    layers: int = Field(0, ge=0)
    # Or a share of the blocks, bottom first (0.5: the lower half), whatever the depth.
    layers_fraction: float | None = Field(
        None, ge=0.0, le=1.0
    )  # the first N blocks, counted from the input side
    # Regular expressions (re.search) on parameter names, e.g. "attention\\.self\\.key".
    patterns: list[str] = Field(default_factory=list)


def nearest_names(pattern: str, names: list[str], n: int = 5) -> list[str]:
    """Parameter names closest to a pattern that matched nothing (typos, wrong prefixes):
    whole names and their dotted tails are compared, so "atention.key" finds
    "encoder.layer.0.attention.self.key.weight"."""
    import difflib

    plain = re.sub(r"[\\^$]", "", pattern)
    scored = []
    for name in names:
        parts = name.split(".")
        tails = [".".join(parts[i:]) for i in range(len(parts))]
        best = max(difflib.SequenceMatcher(None, plain, t).ratio() for t in tails)
        scored.append((best, name))
    return [name for _, name in sorted(scored, key=lambda x: -x[0])[:n]]


class Freeze(PlainExport):
    def __init__(self, config: FreezeConfig) -> None:
        self.config = config

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        cfg = self.config
        n_layers = len(ctx.groups.layers)
        n_frozen = (
            round(cfg.layers_fraction * n_layers) if cfg.layers_fraction is not None else cfg.layers
        )
        if cfg.layers > n_layers:
            raise RecipeError(
                f"method.layers={cfg.layers} but the model has {n_layers} layers; "
                f"allowed: 0..{n_layers}"
            )
        frozen_prefixes = (ctx.groups.embeddings if cfg.embeddings else []) + ctx.groups.layers[
            :n_frozen
        ]
        regexes = []
        for pat in cfg.patterns:
            try:
                regexes.append(re.compile(pat))
            except re.error as e:
                raise RecipeError(f"method.patterns: {pat!r} is not a valid regex: {e}") from None
        names = [n for n, _ in model.named_parameters()]
        for pat, rx in zip(cfg.patterns, regexes, strict=True):
            if not any(rx.search(n) for n in names):
                raise RecipeError(
                    f"method.patterns: {pat!r} matches no parameter; the nearest names are "
                    f"{nearest_names(pat, names)}"
                )
        for name, p in model.named_parameters():
            frozen = matches(name, frozen_prefixes) or any(rx.search(name) for rx in regexes)
            p.requires_grad_(not frozen)
        if not any(p.requires_grad for p in model.parameters()):
            raise RecipeError("method: freezing leaves no trainable parameter; freeze less")
        return model


register_method("freeze", FreezeConfig, Freeze)
