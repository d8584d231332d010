"""Training-time augmentation, one module per modality (image.py, text.py).

`resolve_augment` turns a recipe's `data.augment` (a preset plus explicit overrides) into
plain settings for one modality; the modality module builds the ops (kornia for images,
EDA for text). `check_augment` says which fields a task and modality cannot use.
"""

from __future__ import annotations

from typing import Any

# Presets: what each switch defaults to. "medical" keeps geometry conservative: no flips
# (laterality carries meaning on chest X-rays: the heart is on the left), rotations of a
# few degrees and small shifts, as radiographs are taken with the patient upright.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {"hflip": 0.5, "crop_scale": (0.8, 1.0), "brightness": 0.1, "contrast": 0.1},
    "medical": {
        "rotate": 10.0,
        "translate": 0.05,
        "crop_scale": (0.85, 1.0),
        "brightness": 0.1,
        "contrast": 0.1,
    },
    "strong": {
        "hflip": 0.5,
        "rotate": 15.0,
        "translate": 0.1,
        "crop_scale": (0.6, 1.0),
        "brightness": 0.3,
        "contrast": 0.3,
        "policy": "trivialaugment",
        "mixup": 0.2,
    },
}
FIELDS = (
    "hflip",
    "vflip",
    "rotate",
    "translate",
    "crop_scale",
    "brightness",
    "contrast",
    "policy",
    "mixup",
    "cutmix",
)


# Text presets (EDA, Wei & Zou 2019): the per-word rates (alpha) and the share of training
# examples augmented. The paper found alpha = 0.1 a good default across set sizes; gains
# were largest on small sets (500 examples: +3 points), which is where finekit is used.
TEXT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {
        "eda_synonym": 0.1,
        "eda_insert": 0.1,
        "eda_swap": 0.1,
        "eda_delete": 0.1,
        "text_prob": 0.5,
    },
    "strong": {
        "eda_synonym": 0.2,
        "eda_insert": 0.2,
        "eda_swap": 0.2,
        "eda_delete": 0.2,
        "text_prob": 0.9,
    },
}
# Mixup on text mixes sentence features at the classifier head (tasks/classify.py), not
# words; `mixup` is shared with images (the probability a batch is mixed).
TEXT_FIELDS = (
    "eda_synonym",
    "eda_insert",
    "eda_swap",
    "eda_delete",
    "text_prob",
    "mixup",
    "mixup_alpha",
)
MIXUP_ALPHA = 0.4  # text mixup's Beta(alpha, alpha) when data.augment.mixup_alpha is unset
MODALITY_FIELDS = {"image": FIELDS, "text": TEXT_FIELDS}
MODALITY_PRESETS = {"image": PRESETS, "text": TEXT_PRESETS}


def resolve_augment(spec: Any, modality: str = "image") -> dict[str, Any]:
    """Preset defaults of `modality`, then every field the recipe set explicitly."""
    base = MODALITY_PRESETS[modality].get(spec.preset, {})
    out: dict[str, Any] = {}
    for name in MODALITY_FIELDS[modality]:
        value = getattr(spec, name)
        out[name] = base.get(name) if value is None else value
    if modality == "image":
        out["policy"] = out["policy"] or "none"
    return out


def _is_set(value: Any) -> bool:
    return value is not None and value != 0 and value != "none"


def check_augment(spec: Any, task: str, modality: str | None) -> None:
    """Refuse what the task cannot do, naming the field: text ops on images, image ops on
    text, and any augmentation for tasks without a modality (causal_lm, chat)."""
    if modality not in MODALITY_FIELDS:
        used = [f"preset={spec.preset!r}"] if spec.preset != "none" else []
        used += [f for f in dict.fromkeys((*FIELDS, *TEXT_FIELDS)) if _is_set(getattr(spec, f))]
        if used:
            raise ValueError(
                f"data.augment.{used[0]}: task {task!r} does not support "
                f"augmentation (only classify on images or text does); remove data.augment"
            )
        return
    if spec.preset not in MODALITY_PRESETS[modality]:
        raise ValueError(
            f"data.augment.preset={spec.preset!r} has no meaning for {modality}; "
            f"{modality} presets: {', '.join(MODALITY_PRESETS[modality])}"
        )
    for other, fields in MODALITY_FIELDS.items():
        if other == modality:
            continue
        for f in fields:
            if f not in MODALITY_FIELDS[modality] and _is_set(getattr(spec, f)):
                raise ValueError(
                    f"data.augment.{f} is for {other} data; task {task!r} on "
                    f"{modality} data cannot use it ({modality} fields: "
                    f"{', '.join(MODALITY_FIELDS[modality])})"
                )
    if modality == "text" and spec.mixup_alpha is not None and not _is_set(spec.mixup):
        raise ValueError(
            "data.augment.mixup_alpha has no effect without data.augment.mixup (the "
            "probability that a training batch is mixed, e.g. 1.0)"
        )
