"""Image data: folders (one sub-folder per class), .npz arrays (MedMNIST style) and
manifests (a CSV/JSONL column of paths) -> DataFrames with an `image` column; decoding
to uint8 arrays with every bad file named, or skipped and counted (`data.on_bad_image`).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finekit.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
# Split names as people name them on disk (MedMNIST uses "val").
SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("val", "valid", "validation"),
    "test": ("test",),
}


# --------------------------------------------------------------------------- npz
def npz_splits(path: str) -> dict[str, tuple[str, str]]:
    """The splits an .npz holds: split -> (images key, labels key)."""
    keys = _npz_keys(path)
    out: dict[str, tuple[str, str]] = {}
    for split, aliases in SPLIT_ALIASES.items():
        for a in aliases:
            if f"{a}_images" in keys and f"{a}_labels" in keys:
                out[split] = (f"{a}_images", f"{a}_labels")
                break
    if not out and "images" in keys and "labels" in keys:
        out["train"] = ("images", "labels")
    if not out:
        raise DataError(
            f"{path}: an .npz needs arrays train_images/train_labels (also val_*, test_*) or "
            f"images/labels; it has {sorted(keys)}"
        )
    return out


def _npz_keys(path: str) -> list[str]:
    if not Path(path).is_file():
        raise DataError(f"data file {path} does not exist (check data.train/validation/test)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return list(z.files)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable .npz file: {e}") from None


def read_npz(path: str, split: str, label_column: str = "label") -> pd.DataFrame:
    """One split of an .npz as rows (image array, int label)."""
    splits = npz_splits(path)
    if split not in splits:
        raise DataError(f"{path} has no {split} arrays (it has splits {sorted(splits)})")
    ikey, lkey = splits[split]
    with np.load(path, allow_pickle=False) as z:
        images, labels = z[ikey], z[lkey]
    labels = labels.reshape(len(labels), -1)
    if labels.shape[1] != 1:
        raise DataError(
            f"{path}: {lkey} has shape {labels.shape}; one label per image was expected "
            "(multi-label sets are not supported by classify)"
        )
    if images.ndim not in (3, 4) or len(images) != len(labels):
        raise DataError(
            f"{path}: {ikey} has shape {images.shape} for {len(labels)} labels; expected "
            "(N, H, W) or (N, H, W, C) with one image per label"
        )
    return pd.DataFrame({"image": list(images), label_column: labels[:, 0].astype(int)})


# --------------------------------------------------------------------------- folders
def folder_split_dir(root: str, split: str) -> Path | None:
    """root/<train|val|test>/<class>/...: the split's folder, if the tree is split."""
    for a in SPLIT_ALIASES[split]:
        if (Path(root) / a).is_dir():
            return Path(root) / a
    return None


def read_image_folder(root: str, split: str = "train", label_column: str = "label") -> pd.DataFrame:
    """One sub-folder per class (the folder name is the label), files of image suffixes."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"image folder {root} does not exist (check data.train/validation/test)")
    sub = folder_split_dir(root, split)
    if sub is not None:
        base = sub
    elif split != "train":
        raise DataError(f"image folder {root} has no {split} sub-folder")
    classes = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"image folder {base} has no class sub-folders (expected {base}/<label>/*.png)"
        )
    rows = []
    for c in classes:
        files = sorted(
            f for f in c.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DataError(
                f"class folder {c} has no images (suffixes {sorted(IMAGE_SUFFIXES)}); "
                "add images or remove the folder"
            )
        rows += [{"image": str(f), label_column: c.name} for f in files]
    return pd.DataFrame(rows)


def resolve_manifest_paths(df: pd.DataFrame, column: str, manifest: str) -> pd.DataFrame:
    """Relative paths in a manifest are relative to the manifest's own folder."""
    if column not in df.columns:
        raise DataError(
            f"{manifest}: no column {column!r} (set data.image_column); columns are "
            f"{[str(c) for c in df.columns]}"
        )
    base = Path(manifest).parent

    def fix(v: Any) -> Any:
        if isinstance(v, str) and v and not Path(v).is_absolute():
            return str(base / v)
        return v

    return df.assign(**{column: df[column].map(fix)})


# --------------------------------------------------------------------------- decoding
def to_uint8(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 from any array layout/dtype people store images in."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]  # drop alpha
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(f"an image array of shape {np.asarray(arr).shape} is not (H,W[,C])")
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        scale = 255.0 if a.size and float(np.nanmax(a)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(a) * scale, 0, 255).round().astype(np.uint8)
    if a.dtype == np.uint16 or (a.size and a.max() > 255):
        return (a.astype(np.float64) * 255.0 / max(1.0, float(a.max()))).round().astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def _open(path: Any) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as opened:
        opened.load()  # decode now: a truncated file fails here, not later
        im: Image.Image = opened
        if im.mode == "P":  # palette images: their colours, not the indices
            im = im.convert("RGB")
        if im.mode in ("1", "L", "LA"):
            return np.asarray(im.convert("L"))
        if im.mode in ("I;16", "I;16B", "I", "F"):
            return to_uint8(np.asarray(im))
        return np.asarray(im.convert("RGB"))


def decode_images(
    df: pd.DataFrame, column: str, source: str, on_bad: str = "error"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Replace `column` by uint8 arrays; bad files raise (naming the row and file) or are
    dropped and counted. Returns the rows kept and a report of modes, sizes and skips."""
    images: list[np.ndarray | None] = []
    skipped: list[str] = []
    modes: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for i, v in enumerate(df[column].tolist()):
        try:
            if isinstance(v, np.ndarray):
                img = to_uint8(v)
            elif isinstance(v, (str, Path)):
                if not str(v).strip():
                    raise ValueError("an empty path")
                if not Path(v).is_file():
                    raise FileNotFoundError(f"{v} does not exist")
                img = _open(str(v))
            elif isinstance(v, (bytes, bytearray)):
                import io

                img = _open(io.BytesIO(v))
            elif isinstance(v, dict) and ("bytes" in v or "path" in v):  # HF Image feature
                import io

                img = _open(io.BytesIO(v["bytes"]) if v.get("bytes") else v["path"])
            else:
                raise ValueError(f"a {type(v).__name__} is neither a path nor an image array")
        except Exception as e:  # PIL raises many types for corrupt files; all mean "bad image"
            why = f"{type(e).__name__}: {e}"
            where = f"row {i + 1}" + (f" ({v})" if isinstance(v, (str, Path)) else "")
            what = f"{source}: {where} column {column!r}: unreadable image ({why})"
            if on_bad == "error":
                raise DataError(
                    what + "; fix or remove it, or set data.on_bad_image: skip"
                ) from None
            log.warning("skipped %s", what)
            skipped.append(what)
            images.append(None)
            continue
        modes["grayscale" if img.ndim == 2 else "rgb"] += 1
        sizes[f"{img.shape[1]}x{img.shape[0]}"] += 1
        images.append(img)
    keep = [i for i, im in enumerate(images) if im is not None]
    out = df.iloc[keep].copy()
    out[column] = [images[i] for i in keep]
    if not len(out):
        raise DataError(f"{source}: no readable image left ({len(skipped)} skipped)")
    report = {
        "images": len(out),
        "skipped": len(skipped),
        "skipped_examples": skipped[:5],
        "modes": dict(modes),
        "sizes": dict(sizes.most_common(5)),
        "distinct_sizes": len(sizes),
    }
    return out.reset_index(drop=True), report
