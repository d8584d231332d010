"""Task `classify` on images: folders, manifests or .npz arrays -> one label per image.

Images are decoded once (bad files named, or skipped and counted), resized once to the
backbone's input side (`task.image_size`, else its processor's) and kept as uint8; each
training batch is augmented on the fly (kornia, `data.augment`), then normalised with
the backbone's own mean/std. Grayscale scans become 3 channels for RGB backbones.
Beyond accuracy it reports balanced accuracy, ROC-AUC, sensitivity/specificity at a
threshold, calibration (ECE) and Grad-CAM heat maps of a few test images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from finekit.core.contracts import Batch, EncodedDataset, HeadSpec, Prepared, ReportSection
from finekit.data.images import decode_images
from finekit.data.splits import Splits
from finekit.errors import DataError
from finekit.evaluate.metrics import probability_metrics
from finekit.recipe import Recipe
from finekit.recipe.auto import AUTO, concrete
from finekit.tasks.classify.common import (
    as_label,
    check_metric,
    check_seen,
    label_metrics,
    named,
    split_labelled,
    top_labels,
    train_rows,
)
from finekit.tasks.classify.config import ClassifyConfig

log = logging.getLogger(__name__)
IMAGE_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "macro_f1",
    "weighted_f1",
    "sensitivity",
    "specificity",
    "loss",
    "ece",
)
GRADCAM_IMAGES = 8  # test images shown with heat maps in the report


def processor_geometry(
    processor: Any, image_size: int | None
) -> tuple[int, list[float], list[float]]:
    """(side, mean, std) from an HF image processor or finekit's ImagePreprocessor."""
    size = getattr(processor, "size", None) or {}
    if isinstance(size, int):
        side = size
    else:
        side = size.get("height") or size.get("shortest_edge") or size.get("width") or 224
    mean = list(getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5])
    std = list(getattr(processor, "image_std", None) or [0.5, 0.5, 0.5])
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return int(image_size or side), [float(m) for m in mean], [float(s) for s in std]


class ImageClassifyTask:
    """Image classification (an image-classification head on any vision backbone)."""

    name = "classify"
    size_unit = "training examples"
    metric_names: tuple[str, ...] = IMAGE_METRICS

    def __init__(self, config: ClassifyConfig) -> None:
        self.config = config
        self.labels: list[str] = []
        self.label_column = "label"
        self.image_column = "image"
        self.on_bad_image = "error"
        # `auto` until the run resolves it (setup rebuilds the task): the processor's size.
        size = config.image_size
        self.size: int | None = None if size == AUTO else concrete(size, "task.image_size")
        self.mean: list[float] = [0.5, 0.5, 0.5]
        self.std: list[float] = [0.5, 0.5, 0.5]
        self.positive: int | None = None
        self.class_weight: torch.Tensor | None = None
        self.balanced_sampling = False
        self.augment: nn.Module | None = None
        self.mix: nn.Module | None = None
        self.image_report: dict[str, Any] = {}
        self._augment_spec: Any = None
        self._geometry_ready = False  # size/mean/std known (from the processor or state)

    # ------------------------------------------------------------------ data
    def image_sides(self, df: pd.DataFrame) -> list[int]:
        return [int(max(a.shape[:2])) for a in df[self.image_column]]

    def prepare(self, splits: Splits, recipe: Recipe) -> Prepared:
        d = recipe.data
        self.image_column = d.image_column or "image"
        self.label_column = d.label_column
        self.on_bad_image = d.on_bad_image
        self.balanced_sampling = d.balanced_sampling
        decoded: dict[str, pd.DataFrame] = {}
        for split, df in splits.items():
            src = splits.sources.get(split, split)
            self._check(df, src, with_labels=True)
            decoded[split], self.image_report[split] = decode_images(
                df, self.image_column, src, self.on_bad_image
            )
        check_metric(recipe, self.metric_names)
        out, self.labels, info = split_labelled(
            Splits(**decoded, sources=splits.sources),
            recipe,
            self.label_column,
            self.config.label_names,
            lambda df, source: self._check(df, source, with_labels=True),
        )
        prepared = Prepared(splits=out, info=info)
        self._set_positive()
        counts = prepared.splits.train[self.label_column].value_counts()
        if self.config.class_weights == "balanced":
            n, k = len(prepared.splits.train), len(self.labels)
            w = [n / (k * max(1, int(counts.get(name, 0)))) for name in self.labels]
            self.class_weight = torch.tensor(w, dtype=torch.float32)
        from finekit.data.augment.image import build_mix_augment

        self._augment_spec = d.augment
        self.mix = build_mix_augment(d.augment)
        prepared.info["images"] = self.image_report
        prepared.info["positive_label"] = (
            self.labels[self.positive] if self.positive is not None else None
        )
        prepared.info["class_weights"] = (
            dict(zip(self.labels, self.class_weight.tolist(), strict=True))
            if self.class_weight is not None
            else None
        )
        prepared.info["augment"] = {"preset": d.augment.preset, **_augment_summary(d.augment)}
        return prepared

    def _set_positive(self) -> None:
        pos = self.config.positive_label
        if pos is not None:
            if pos not in self.labels:
                raise DataError(
                    f"task.positive_label={pos!r} is not a label; labels are {self.labels}"
                )
            self.positive = self.labels.index(pos)
        elif len(self.labels) == 2:
            self.positive = 1

    def _check(self, df: pd.DataFrame, source: str, with_labels: bool) -> None:
        needed = {self.image_column: "data.image_column"}
        if with_labels:
            needed[self.label_column] = "data.label_column"
        for col, field in needed.items():
            if col not in df.columns:
                raise DataError(
                    f"{source}: no column {col!r} (set {field}); columns are "
                    f"{[str(c) for c in df.columns]}"
                )
        if with_labels:
            empty = df[self.label_column].isna() | (
                df[self.label_column].astype(str).str.strip() == ""
            )
            if empty.any():
                rows = (np.flatnonzero(empty.to_numpy())[:5] + 1).tolist()
                raise DataError(
                    f"{source}: column {self.label_column!r} is empty in {int(empty.sum())} "
                    f"row(s) (data rows {rows}); fill or drop them"
                )

    def train_size(self, info: dict[str, Any]) -> int | None:
        return train_rows(info)

    def encoding_record(self) -> dict[str, Any]:
        return {}  # images are resized, never truncated

    def forget_split(self, split: str) -> None:
        pass

    def head(self) -> HeadSpec:
        return HeadSpec(
            kind="image-classification",
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
        )

    # ------------------------------------------------------------------ features
    def adapt_processor(self, processor: Any) -> None:
        """Fix the input geometry from the processor (and tell the exported processor the
        side we trained at, so plain transformers resizes alike)."""
        self.size, self.mean, self.std = processor_geometry(processor, self.size)
        self._geometry_ready = True
        size = getattr(processor, "size", None)
        if isinstance(size, dict):
            if "height" in size or "width" in size:
                processor.size = {"height": self.size, "width": self.size}
            elif "shortest_edge" in size:
                processor.size = {"shortest_edge": self.size}
        if hasattr(processor, "crop_size") and isinstance(processor.crop_size, dict):
            processor.crop_size = {"height": self.size, "width": self.size}

    def encode(self, df: pd.DataFrame, processor: Any, split: str) -> EncodedDataset:
        if not self._geometry_ready:
            self.adapt_processor(processor)
        assert self.size is not None
        if split == "train" and self._augment_spec is not None and self.augment is None:
            from finekit.data.augment.image import build_image_augment

            self.augment = build_image_augment(self._augment_spec, self.size)
        pixels = resize_uint8(df[self.image_column].tolist(), self.size)
        labels = (
            [self.labels.index(v) for v in as_label(df[self.label_column])]
            if self.label_column in df.columns
            else None
        )
        feats = []
        for i in range(len(pixels)):
            f: dict[str, Any] = {"pixels": pixels[i]}
            if labels is not None:
                f["labels"] = labels[i]
            feats.append(f)
        ds = EncodedDataset(feats)
        if split == "train" and self.balanced_sampling and labels is not None:
            counts = np.bincount(labels, minlength=len(self.labels))
            ds.sample_weights = [1.0 / counts[y] for y in labels]  # type: ignore[attr-defined]
        return ds

    def collator(self, processor: Any) -> Callable[[list[dict[str, Any]]], Batch]:
        def collate(feats: list[dict[str, Any]]) -> Batch:
            # (B, 3, S, S) uint8; grayscale images feed RGB backbones on all 3 channels.
            x = torch.stack([f["pixels"].expand(3, -1, -1) for f in feats])
            batch = {"pixels": x}
            if "labels" in feats[0]:
                batch["labels"] = torch.tensor([f["labels"] for f in feats])
            return batch

        return collate

    # ------------------------------------------------------------------ steps
    def _pixels(self, model: nn.Module, pixels: torch.Tensor, train: bool) -> Any:
        x = pixels.float() / 255.0  # (B, 3, S, S) in [0, 1]
        if train and self.augment is not None:
            self.augment.to(x.device)
            x = self.augment(x)
        return x

    def _normalise(self, x: torch.Tensor, model: nn.Module) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        dtype = next(model.parameters()).dtype
        # channels_last: what CNN kernels run fastest on (a no-op cost for ViTs).
        return ((x - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)

    def _forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = model(pixel_values=self._normalise(x, model))
        return (out.logits if hasattr(out, "logits") else out).float()

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        labels = batch["labels"]
        x = self._pixels(model, batch["pixels"], train=True)
        mixed = None
        if self.mix is not None:
            x, mixed = self.mix(x, labels)
        logits = self._forward(model, x)
        w = self.class_weight.to(logits.device) if self.class_weight is not None else None
        ls = self.config.label_smoothing
        if mixed is None:
            return F.cross_entropy(logits, labels, weight=w, label_smoothing=ls)
        a, b, lam = mixed[:, 0].long(), mixed[:, 1].long(), mixed[:, 2].to(logits.dtype)
        la = F.cross_entropy(logits, a, weight=w, label_smoothing=ls, reduction="none")
        lb = F.cross_entropy(logits, b, weight=w, label_smoothing=ls, reduction="none")
        return (lam * la + (1 - lam) * lb).mean()

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        x = self._pixels(model, batch["pixels"], train=False)
        out = {"probs": self._forward(model, x).softmax(-1)}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        m = label_metrics(outputs, self.labels)
        y = outputs["labels"].cpu().numpy()
        probs = outputs["probs"].cpu().numpy()
        m.update(probability_metrics(y, probs, self.labels, self.positive, self.config.threshold))
        return m

    def artifacts(
        self,
        outputs: dict[str, torch.Tensor],
        out_dir: Path,
        split: str,
        rows: pd.DataFrame | None = None,
    ) -> list[str]:
        from finekit.evaluate.plots import plot_confusion_matrix, plot_reliability, plot_roc

        probs = outputs["probs"].cpu().numpy()
        y = outputs["labels"].cpu().numpy()
        preds = probs.argmax(-1)
        files = []
        if rows is not None and len(rows) == len(preds):
            ident = [
                v if isinstance(v, str) else f"row {i + 1}"
                for i, v in enumerate(rows[self.image_column].tolist())
            ]
            pd.DataFrame(
                {
                    "image": ident,
                    "label": [self.labels[int(i)] for i in y],
                    "predicted": [self.labels[int(i)] for i in preds],
                    "confidence": probs.max(-1).round(5),
                    **(
                        {f"p_{self.labels[self.positive]}": probs[:, self.positive].round(5)}
                        if self.positive is not None
                        else {}
                    ),
                }
            ).to_csv(out_dir / f"predictions_{split}.csv", index=False)
            files.append(f"predictions_{split}.csv")
        title = f"({split})"
        plot_confusion_matrix(
            y,
            preds,
            self.labels,
            out_dir / f"confusion_matrix_{split}.png",
            title=f"Confusion matrix {title}",
        )
        files.append(f"confusion_matrix_{split}.png")
        if len(set(y.tolist())) > 1:
            plot_roc(
                y,
                probs,
                self.labels,
                out_dir / f"roc_{split}.png",
                f"ROC {title}",
                positive=self.positive,
            )
            files.append(f"roc_{split}.png")
        plot_reliability(y, probs, out_dir / f"reliability_{split}.png", f"Calibration {title}")
        files.append(f"reliability_{split}.png")
        return files

    def explain(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame, out_dir: Path, split: str
    ) -> list[str]:
        """Grad-CAM heat maps of a few images (half each class where possible)."""
        from finekit.evaluate.gradcam import grad_cam, last_conv_layer, plot_gradcam_grid

        if not len(rows) or last_conv_layer(model) is None:
            return []  # no convolution (e.g. a ViT): no Grad-CAM
        y = [self.labels.index(v) for v in as_label(rows[self.label_column])]
        picks: list[int] = []
        per_class = max(1, GRADCAM_IMAGES // max(1, len(self.labels)))
        for c in range(len(self.labels)):
            picks += [i for i, v in enumerate(y) if v == c][:per_class]
        picks = sorted(picks)[:GRADCAM_IMAGES]
        ds = self.encode(rows.iloc[picks].reset_index(drop=True), processor, "explain")
        batch = self.collator(processor)([ds[i] for i in range(len(ds))])
        device = next(model.parameters()).device
        x = batch["pixels"].to(device).float() / 255.0
        with torch.no_grad():
            probs = self._forward(model, x).softmax(-1).cpu()
        wrapped = _Normalised(self, model)
        # The last conv with a spatial output (not a squeeze-excite or post-pool 1x1).
        cams = grad_cam(wrapped, x, target_layer=last_conv_layer(wrapped, x))
        titles = [
            f"true {self.labels[y[i]]} / pred {self.labels[int(p.argmax())]} {float(p.max()):.2f}"
            for i, p in zip(picks, probs, strict=True)
        ]
        images = (batch["pixels"].permute(0, 2, 3, 1).numpy()).astype(np.uint8)
        name = f"gradcam_{split}.png"
        plot_gradcam_grid(images, cams.cpu().numpy(), titles, out_dir / name)
        return [name]

    # ------------------------------------------------------------------ inference
    def read_inputs(self, df: pd.DataFrame, source: str, with_labels: bool = False) -> pd.DataFrame:
        self._check(df, source, with_labels=with_labels)
        if with_labels:
            df = named(df, self.label_column, self.config.label_names)
            check_seen(df, self.labels, self.label_column, source, "the training data")
        df, _ = decode_images(df, self.image_column, source, self.on_bad_image)
        return df

    def predict(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame, batch_size: int
    ) -> list[dict[str, Any]]:
        from finekit.evaluate.runner import run_outputs

        ds = self.encode(rows.drop(columns=[self.label_column], errors="ignore"), processor, "p")
        out = run_outputs(self, model, ds, self.collator(processor), batch_size)
        return top_labels(out["probs"], self.labels)

    @property
    def input_column(self) -> str:
        """Where bare values given to `predict` (paths, arrays) go."""
        return self.image_column

    def read_file(self, path: str, hf_split: str | None) -> pd.DataFrame:
        """An eval/predict file: an .npz (its test arrays, else its only split), an image
        folder (its test/ sub-folder, else train/), or a table/manifest whose relative
        paths are relative to the manifest."""
        from finekit.data.images import (
            npz_splits,
            read_image_folder,
            read_npz,
            resolve_manifest_paths,
        )
        from finekit.data.readers import detect_format, read_table

        fmt = detect_format(path)
        if fmt == "npz":
            splits = npz_splits(path)
            split = "test" if "test" in splits else next(iter(splits))
            return read_npz(path, split, self.label_column)
        if fmt == "images":
            split = "test" if (Path(path) / "test").is_dir() else "train"
            return read_image_folder(path, split, self.label_column)
        return resolve_manifest_paths(read_table(path, hf_split=hf_split), self.image_column, path)

    def report_sections(
        self, run_dir: Path, recipe: Recipe, run: dict[str, Any]
    ) -> list[ReportSection]:
        from finekit.tasks.classify.image_report import sections

        return sections(self, run_dir, recipe, run)

    def state(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "image_column": self.image_column,
            "label_column": self.label_column,
            "on_bad_image": self.on_bad_image,
            "size": self.size,
            "mean": self.mean,
            "std": self.std,
            "positive": self.positive,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])
        self.image_column = state["image_column"]
        self.label_column = state["label_column"]
        self.on_bad_image = state.get("on_bad_image", "error")
        self.size = int(state["size"])
        self.mean, self.std = list(state["mean"]), list(state["std"])
        self.positive = state.get("positive")
        self._geometry_ready = True


class _Normalised(nn.Module):
    """The model with the task's normalisation in front (Grad-CAM sees [0, 1] pixels)."""

    def __init__(self, task: ImageClassifyTask, model: nn.Module) -> None:
        super().__init__()
        self.task, self.model = task, model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.task._forward(self.model, pixel_values)


def resize_uint8(images: list[np.ndarray], size: int) -> list[torch.Tensor]:
    """uint8 (C, size, size) tensors, C = 1 for grayscale, 3 for colour; images of one
    shape are resized together (antialiased bilinear, as PIL's resize does)."""
    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    for shape, idx in groups.items():
        arr = np.stack([images[i] for i in idx])
        t = torch.from_numpy(arr)
        t = t.unsqueeze(1) if len(shape) == 2 else t.permute(0, 3, 1, 2)  # (N, C, H, W)
        if tuple(t.shape[-2:]) != (size, size):
            for start in range(0, len(t), 256):  # bounded memory for big images
                chunk = t[start : start + 256].float()
                r = F.interpolate(
                    chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )
                for j, k in enumerate(idx[start : start + 256]):
                    out[k] = r[j].round().clamp(0, 255).to(torch.uint8)
        else:
            for j, k in enumerate(idx):
                out[k] = t[j].contiguous()
    return [o for o in out if o is not None]


def _augment_summary(spec: Any) -> dict[str, Any]:
    from finekit.data.augment import resolve_augment

    return {k: v for k, v in resolve_augment(spec).items() if v not in (None, 0, "none")}
