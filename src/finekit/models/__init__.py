"""The model room: families that load backbones with task heads and their scratch twins."""

# Registration order is auto-detection order: specific carried families before "hf",
# which claims any folder with a config.json.
from finekit.models import efficientnet_lite as _efficientnet_lite  # noqa: F401,I001
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
