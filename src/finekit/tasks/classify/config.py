"""The `task:` section of a classification recipe (text or images)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from finekit.data.readers import looks_like_images
from finekit.recipe import Recipe, TaskConfig


class ClassifyConfig(TaskConfig):
    """Options of `classify`."""

    name: str = "classify"
    # Soft targets (Szegedy et al. 2016): 0.1 often helps small, noisy label sets.
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # text | image; auto: image for image folders, .npz files or a data.image_column.
    modality: Literal["auto", "text", "image"] = "auto"
    # Class-weighted loss: "balanced" weighs each class by n / (k * count) (sklearn's rule).
    class_weights: Literal["none", "balanced"] = "none"
    # Names for integer labels, e.g. {0: normal, 1: pneumonia} (arrays store numbers).
    label_names: dict[str, str] = Field(default_factory=dict)
    # Binary tasks: the class whose sensitivity is reported (default: the second label),
    # and the probability threshold for sensitivity/specificity.
    positive_label: str | None = None
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    # Images: the square input side in pixels (None: the backbone processor's size).
    # Small scans upscaled to 224 px cost ~16x the compute of 56 px.
    image_size: int | None = Field(None, ge=8, le=1024)

    has_classes: ClassVar[bool] = True

    @field_validator("label_names", mode="before")
    @classmethod
    def _keys_as_text(cls, v: Any) -> Any:
        # YAML reads `{0: normal}` with an int key; labels are compared as text.
        return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else v

    def resolve(self, recipe: Recipe) -> None:
        if self.modality == "auto":
            self.modality = "image" if looks_like_images(recipe.data) else "text"

    def input_kind(self) -> str | None:
        return None if self.modality == "auto" else self.modality

    def reads_text_pairs(self) -> bool:
        return self.modality == "text"
