"""The `task:` section of a classification recipe (text or images)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from finekit.data.readers import looks_like_images
from finekit.recipe import Recipe, TaskConfig
from finekit.recipe.auto import (
    AUTO,
    Auto,
    Proposals,
    encoder_lr,
    schedule_rule,
    text_encoder_rules,
)

SIDES = (32, 64, 112, 160, 224)


def image_size_rule(p: Proposals) -> None:
    """task.image_size: for a CNN (any input size), the smallest of SIDES at least twice
    the images' median side, at most 224; other backbones keep their processor's size.
    Source: benchmarks/README.md "Input resolution" (28 px X-rays: 64 px 0.968 AUC in 91 s,
    112 px 0.971 in 214 s, 28 px 0.951)."""
    src = "benchmarks/README.md (input resolution on 28 px chest X-rays)"
    sides = p.facts.image_sides
    if not sides or not p.facts.batchnorm:
        why = "not a BatchNorm CNN" if sides else "image sides unknown"
        p.propose("task.image_size", None, f"the backbone processor's size ({why})", src)
        return
    native = sorted(sides)[len(sides) // 2]
    value = next((s for s in SIDES if s >= 2 * native), SIDES[-1])
    p.propose(
        "task.image_size",
        value,
        f"images of {native} px (median side): about 2x, a CNN's ImageNet features need "
        "some resolution, and cost grows with its square",
        src,
    )


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
    # auto: about twice the images' own side for CNNs (28 px scans -> 64 px), else None.
    image_size: Annotated[int, Field(ge=8, le=1024)] | Auto | None = AUTO

    has_classes: ClassVar[bool] = True
    auto_fields: ClassVar[dict[str, Any]] = {"image_size": None}

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

    def auto_defaults(self, p: Proposals) -> None:
        if self.modality != "image":
            p.propose("task.image_size", None, "text input", "-")
            # benchmarks/README.md "What the ladder caught": head rate 0.1 chosen on
            # Banking77's validation split (0.812 / 0.834 / 0.835 at 2e-3 / 0.02 / 0.1).
            text_encoder_rules(p, 0.1, "benchmarks/README.md (head-rate sweep on Banking77)")
            return
        image_size_rule(p)
        p.propose("training.batch_size", 32, "the image recipes' batch", "recipes/chest-xray.yaml")
        if p.facts.batchnorm:
            p.propose(
                "training.lr",
                5e-4,
                "a BatchNorm CNN: tolerates larger rates than a transformer",
                "recipes/chest-xray.yaml (EfficientNet-Lite0, measured in benchmarks/README.md)",
            )
        else:
            encoder_lr(p)  # vision transformers fine-tune like text encoders of their size
        p.propose(
            "training.head_lr",
            3e-3,
            "the new head starts random: train it faster",
            "recipes/chest-xray.yaml (measured in benchmarks/README.md)",
        )
        p.propose(
            "training.warmup_ratio", 0.1, "warm-up over 10% of steps", "recipes/chest-xray.yaml"
        )
        schedule_rule(
            p,
            floor_steps=600,
            min_epochs=3,
            source="recipes/chest-xray.yaml (8 epochs x 76 steps = 608 steps on 2,428 X-rays)",
        )
