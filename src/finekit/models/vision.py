"""The image geometry a carried vision family ships with its weights.

`ImagePreprocessor` stands in for a transformers image processor when the architecture is
carried by finekit (no `AutoImageProcessor` knows it). Its attributes are named like the
transformers ones (`size`, `image_mean`, `image_std`, `resample`, `crop_pct`) so the image task
reads either the same way. It does not transform images itself: the task resizes, crops and
normalises; this object only says how the pre-trained weights expect their input.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from finekit.errors import ModelError

PROCESSOR_FILE = "preprocessor_config.json"
RESAMPLES = ("nearest", "bilinear", "bicubic", "lanczos")


def _default_size() -> dict[str, int]:
    return {"height": 224, "width": 224}


@dataclass
class ImagePreprocessor:
    """Input geometry and normalisation of a pre-trained vision backbone."""

    # Final network input (after resize + centre crop).
    size: dict[str, int] = field(default_factory=_default_size)
    # Per-channel normalisation on the 0..1 pixel scale: (x - mean) / std.
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    resample: str = "bilinear"
    # Evaluation crop: resize the shorter side to size / crop_pct, then centre-crop `size`.
    # None = resize straight to `size` (no crop).
    crop_pct: float | None = 0.875

    def __post_init__(self) -> None:
        size = self.size
        if (
            not isinstance(size, dict)
            or set(size) != {"height", "width"}
            or not all(isinstance(v, int) and v > 0 for v in size.values())
        ):
            raise ModelError(f"image size must be {{'height': int, 'width': int}}, got {size!r}")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or len(values) != 3:
                raise ModelError(f"{name} must list 3 per-channel values, got {values!r}")
            setattr(self, name, [float(v) for v in values])
        if any(s <= 0 for s in self.image_std):
            raise ModelError(f"image_std must be positive, got {self.image_std}")
        if self.resample not in RESAMPLES:
            raise ModelError(f"resample {self.resample!r} is not one of {RESAMPLES}")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ModelError(f"crop_pct must be in (0, 1] or null, got {self.crop_pct}")

    def to_dict(self) -> dict[str, Any]:
        return {"finekit_processor": type(self).__name__, **asdict(self)}

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write `preprocessor_config.json` next to the weights."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / PROCESSOR_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ImagePreprocessor:
        """Read a folder's `preprocessor_config.json` (or that file itself)."""
        p = Path(path)
        file = p if p.suffix == ".json" else p / PROCESSOR_FILE
        if not file.is_file():
            raise ModelError(
                f"{file} is missing: a finekit vision export needs its {PROCESSOR_FILE} "
                "(written by ImagePreprocessor.save_pretrained)"
            )
        try:
            data = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{file} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("finekit_processor") != cls.__name__:
            raise ModelError(
                f"{file} does not describe a finekit {cls.__name__} "
                f'(expected "finekit_processor": "{cls.__name__}")'
            )
        data.pop("finekit_processor")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{file}: unknown keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except ModelError as e:
            raise ModelError(f"{file}: {e}") from None
