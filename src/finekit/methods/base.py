"""The method contract: which parameters train and how the result is exported.

A method is one module: a config class (its recipe options) and a class with `apply`
(make the model trainable the method's way) and `export` (write model/, adapter/...),
registered with `register_method`. The loop never knows which method ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from finekit.core.contracts import METHODS, HeadSpec, MethodEntry
from finekit.errors import RegistryError
from finekit.models.base import LayerGroups, ModelFamily
from finekit.recipe import MethodConfig


@dataclass
class MethodContext:
    """What a method may look at: the model's layer groups and the task's head."""

    groups: LayerGroups
    head: HeadSpec
    model_type: str | None = None  # e.g. "bert" (HF config.model_type), for per-arch defaults


@runtime_checkable
class Method(Protocol):
    @property
    def config(self) -> MethodConfig: ...

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        """Return the model to train (same object or a wrapper) with requires_grad set."""
        ...

    def export(
        self,
        model: nn.Module,
        family: ModelFamily,
        processor: Any,
        head: HeadSpec,
        run_dir: Path,
        keep_adapter: bool,
    ) -> dict[str, str]:
        """Write the trained model to run_dir/model (plain, loadable by its own library)."""
        ...

    def callbacks(self, model: nn.Module) -> list[Any]:
        """Loop callbacks the method needs (e.g. gradual unfreezing's schedule)."""
        ...

    def schedule_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps the method's schedule needs to finish (0: none)."""
        ...


class Unscheduled:
    """For methods that change nothing while training runs."""

    def callbacks(self, model: nn.Module) -> list[Any]:
        return []

    def schedule_steps(self, steps_per_epoch: int) -> int:
        return 0


class PlainExport(Unscheduled):
    """Export for methods that train the model in place (full, freeze, BitFit...)."""

    def export(
        self,
        model: nn.Module,
        family: ModelFamily,
        processor: Any,
        head: HeadSpec,
        run_dir: Path,
        keep_adapter: bool,
    ) -> dict[str, str]:
        family.save(model, processor, run_dir / "model", head)
        return {"model": "model"}


def register_method(
    name: str, config_cls: type[MethodConfig], factory: Callable[[Any], Method]
) -> None:
    """Make a method available to recipes as `method: {name: <name>, ...}`."""
    METHODS.register(name, MethodEntry(config_cls=config_cls, factory=factory))


def build_method(config: MethodConfig) -> Method:
    """The registered method for a recipe's `method` section; a plug-in that lacks part of
    the contract is named here, before the run directory exists."""
    method = METHODS.get(config.name).factory(config)
    if not isinstance(method, Method):
        core = [m for m in (*Method.__annotations__, *vars(Method)) if not m.startswith("_")]
        missing = sorted({m for m in core if m not in dir(method)})
        raise RegistryError(
            f"method {config.name!r} does not implement {', '.join(missing)} (methods that "
            "change nothing while training can inherit finekit.methods.base.Unscheduled)"
        )
    return method


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def matches(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze_batchnorm_stats(model: nn.Module) -> int:
    """Frozen BatchNorm layers run in eval mode: they keep the pre-trained running
    statistics instead of re-estimating them from small fine-tuning batches (which shifts
    the features the frozen layers above were trained on). A pre-hook checks at every
    forward, so gradual unfreezing hands a layer back to train mode when it unfreezes.
    Returns how many BatchNorm layers are watched."""

    def hook(module: nn.Module, args: Any) -> None:
        # The layer trains only when the whole model trains and the layer is trainable.
        module.training = model.training and any(p.requires_grad for p in module.parameters())

    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(True for _ in m.parameters()):
            m.register_forward_pre_hook(hook)
            n += 1
    return n
