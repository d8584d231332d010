"""The model contract: load a pre-trained backbone with the task's head, build its
from-scratch twin (same config, random init), save it, and name its layer groups.

A model family (HF transformers, later a carried EfficientNet, timm...) is one module that
implements `ModelFamily` and registers itself; tasks and methods only see this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from finekit.core.contracts import HeadSpec
from finekit.core.registry import Registry
from finekit.recipe import ModelSpec


@dataclass
class LayerGroups:
    """Parameter-name prefixes by depth: what `freeze`, layer-wise LR and gradual
    unfreezing act on, whatever the modality."""

    embeddings: list[str] = field(default_factory=list)  # input stem / token embeddings
    layers: list[str] = field(default_factory=list)  # blocks, bottom (input side) first
    head: list[str] = field(default_factory=list)  # the task head (new, random init)


@dataclass
class LoadedModel:
    model: nn.Module
    processor: Any  # tokenizer / image processor / feature extractor
    family: str
    source: str  # the resolved local path or hub id
    # Weights the checkpoint did not provide or that had another shape (initialised at
    # random, e.g. a new head), and checkpoint weights the model has no place for.
    reinitialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


class ModelFamily(Protocol):
    name: str

    def can_load(self, path: str) -> bool:
        """Whether this family recognises `path` (used by `model.family: auto`)."""
        ...

    def load(
        self, spec: ModelSpec, head: HeadSpec, pretrained: bool = True, exact: bool = False
    ) -> LoadedModel:
        """The pre-trained model with `head` (or, with pretrained=False, its random twin).
        `exact`: every weight must load as saved (reloading an export); otherwise a head
        of another shape is re-initialised for the new task."""
        ...

    def save(self, model: nn.Module, processor: Any, out_dir: Path, head: HeadSpec) -> None:
        """Write what the family's own library loads back (`from_pretrained` for HF)."""
        ...

    def layer_groups(self, model: nn.Module) -> LayerGroups: ...


FAMILIES: Registry[ModelFamily] = Registry("model family")


def register_family(family: ModelFamily) -> ModelFamily:
    return FAMILIES.register(family.name, family)


def family_for(spec: ModelSpec) -> ModelFamily:
    """The family named in the recipe, or the first that recognises the path."""
    from finekit.errors import ModelError
    from finekit.models.resolve import resolve_model_path

    if spec.family != "auto":
        return FAMILIES.get(spec.family)
    path = resolve_model_path(spec.path)
    for name in FAMILIES:
        fam = FAMILIES.get(name)
        if fam.can_load(path):
            return fam
    raise ModelError(
        f"model.path {spec.path!r} is not a model finekit can load: no registered family "
        f"({', '.join(FAMILIES.names())}) recognises it (an HF folder needs config.json)"
    )
