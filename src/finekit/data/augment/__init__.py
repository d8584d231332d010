"""Training-time augmentation, one module per modality (image now).

`resolve_augment` turns a recipe's `data.augment` (a preset plus explicit overrides) into
plain settings; the modality module builds the ops from a well-kept library (kornia).
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


def resolve_augment(spec: Any) -> dict[str, Any]:
    """Preset defaults, then every field the recipe set explicitly."""
    base = PRESETS[spec.preset]
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(spec, name)
        out[name] = base.get(name) if value is None else value
    out["policy"] = out["policy"] or "none"
    return out
