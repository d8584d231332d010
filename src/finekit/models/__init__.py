"""The model room: families that load backbones with task heads and their scratch twins."""

from finekit.models import hf as _hf  # noqa: F401,E402  (registers "hf")
from finekit.models.base import (
    FAMILIES,
    LayerGroups,
    LoadedModel,
    ModelFamily,
    family_for,
    register_family,
)
from finekit.models.resolve import resolve_model_path  # noqa: E402

__all__ = [
    "FAMILIES",
    "LayerGroups",
    "LoadedModel",
    "ModelFamily",
    "family_for",
    "register_family",
    "resolve_model_path",
]
