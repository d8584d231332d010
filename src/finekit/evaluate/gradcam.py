"""Grad-CAM heat maps for image classifiers: where in the image the predicted class came from.

Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization": weights a_k = mean_ij d y_c / d A_k(i, j); CAM = ReLU(sum_k a_k A_k).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 for a parameter-less model)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    return fallback


def _logits(output: Any) -> torch.Tensor:
    """Logits from a Hugging Face style output object (`.logits`), a tuple, or a tensor."""
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def _first_tensor(output: Any) -> Any:
    return output[0] if isinstance(output, (tuple, list)) else output


def _prepare(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """A detached copy of the input on the model's device and in its dtype."""
    return pixel_values.detach().to(
        device=_model_device(model, pixel_values.device), dtype=_model_dtype(model)
    )


def last_conv_layer(model: nn.Module, pixel_values: torch.Tensor | None = None) -> nn.Module | None:
    """The last `nn.Conv2d` in `model.modules()` order whose output is spatial; None if none.

    Without `pixel_values` this is simply the last Conv2d. With them, one no-grad eval-mode
    forward on the first image skips convolutions whose output is 1x1 (e.g. squeeze-excite
    blocks or a conv head after global pooling), which carry no location.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    if pixel_values is None:
        return convs[-1]
    spatial: dict[int, bool] = {}

    def probe(module: nn.Module, _inp: Any, out: Any) -> None:
        t = _first_tensor(out)
        spatial[id(module)] = spatial.get(id(module), False) or (
            t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1
        )

    handles = [m.register_forward_hook(probe) for m in convs]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(pixel_values=_prepare(model, pixel_values[:1]))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for m in reversed(convs):
        if spatial.get(id(m)):
            return m
    return None


def _class_indices(
    class_idx: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor
) -> torch.Tensor:
    """One class index per image: the predicted class, one given class, or one per image."""
    n = logits.shape[0]
    if class_idx is None:
        return logits.argmax(dim=-1)
    idx = torch.as_tensor(class_idx, dtype=torch.long, device=logits.device).reshape(-1)
    if idx.numel() == 1:
        idx = idx.expand(n)
    if idx.numel() != n:
        raise ValueError(f"class_idx has {idx.numel()} entries for {n} images")
    return idx


def grad_cam(
    model: nn.Module,
    pixel_values: torch.Tensor,
    target_layer: nn.Module | None = None,
    class_idx: int | Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Grad-CAM heat maps (N, H, W) in [0, 1] at the input resolution, float32 on the CPU.

    The model runs in eval mode and is called as `model(pixel_values=x)`; `class_idx` None
    explains the predicted class. The gradient is taken with `torch.autograd.grad` on the
    captured activations, so parameters' `.grad`, `requires_grad` flags and the train/eval mode
    are left as they were; frozen models work because the input copy requires grad.
    """
    if pixel_values.dim() != 4:
        raise ValueError(f"pixel_values must be (N, C, H, W), got {tuple(pixel_values.shape)}")
    if target_layer is None:
        target_layer = last_conv_layer(model, pixel_values)
        if target_layer is None:
            raise ValueError(
                "grad_cam: the model has no nn.Conv2d layer with a spatial output; "
                "pass target_layer= (a module whose output is (N, C, h, w))"
            )
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inp: Any, out: Any) -> None:
        captured["act"] = _first_tensor(out)

    was_training = model.training
    handle = target_layer.register_forward_hook(keep)
    try:
        model.eval()
        # A fresh leaf that requires grad: the graph reaches the target layer even when the
        # layers before it (or the whole model) are frozen.
        x = _prepare(model, pixel_values).requires_grad_(True)
        with torch.enable_grad():
            logits = _logits(model(pixel_values=x))
            if "act" not in captured:
                raise ValueError("grad_cam: target_layer was not called in the forward pass")
            act = captured["act"]
            if act.dim() != 4:
                raise ValueError(
                    f"grad_cam: target layer output must be (N, C, h, w), got {tuple(act.shape)}"
                )
            idx = _class_indices(class_idx, logits)
            score = logits.gather(1, idx[:, None]).sum()  # images are independent in eval mode
            (grads,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
        model.train(was_training)

    act32 = act.detach().float()
    weights = grads.detach().float().mean(dim=(2, 3), keepdim=True)  # a_k, Selvaraju eq. 1
    cam = F.relu((weights * act32).sum(dim=1, keepdim=True))  # eq. 2
    cam = F.interpolate(cam, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
    cam = cam[:, 0]
    lo = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - lo
    cam = torch.where(span > 0, (cam - lo) / span.clamp_min(1e-12), torch.zeros_like(cam))
    return cam.clamp(0, 1).cpu()


def plot_gradcam_grid(
    images: np.ndarray,
    heatmaps: np.ndarray,
    titles: list[str],
    path: Path,
    cols: int = 4,
) -> Path:
    """A grid of images (gray or RGB uint8) with their Grad-CAM overlaid (jet, alpha 0.45).

    Heat maps are stretched to each image's extent, so they may be at another resolution.
    """
    images = np.asarray(images)
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    n = len(images)
    if len(heatmaps) != n or len(titles) != n:
        raise ValueError(f"{n} images, {len(heatmaps)} heat maps, {len(titles)} titles")
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
    mappable = None
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        h, w = img.shape[:2]
        extent = (0, w, h, 0)
        vmax = 255 if img.dtype == np.uint8 else None
        if img.ndim == 2:
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, extent=extent)
        else:
            ax.imshow(img, extent=extent)
        mappable = ax.imshow(
            heatmaps[i],
            cmap="jet",
            alpha=0.45,
            vmin=0,
            vmax=1,
            extent=extent,
            interpolation="bilinear",
        )
        ax.set_title(textwrap.fill(titles[i], 28), fontsize=9)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.6, label="Grad-CAM")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
