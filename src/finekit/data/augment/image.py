"""Image augmentation on batches with kornia (CPU and GPU alike, differentiable-free use).

Ops act on float images in [0, 1], shape (B, C, H, W), before normalisation; they draw
from torch's global RNG, which the loop seeds and checkpoints, so runs (and resumed runs)
are reproducible. Mixup/CutMix return soft targets as (label_a, label_b, weight_of_a).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from finekit.data.augment import resolve_augment


def build_image_augment(spec: Any, size: int) -> nn.Module | None:
    """The per-image ops of `data.augment` as one kornia pipeline (None: nothing to do)."""
    import kornia.augmentation as K
    from kornia.augmentation import auto

    a = resolve_augment(spec)
    ops: list[nn.Module] = []
    if a["crop_scale"]:
        lo, hi = a["crop_scale"]
        ops.append(K.RandomResizedCrop((size, size), scale=(lo, hi), ratio=(0.9, 1.1)))
    if a["hflip"]:
        ops.append(K.RandomHorizontalFlip(p=a["hflip"]))
    if a["vflip"]:
        ops.append(K.RandomVerticalFlip(p=a["vflip"]))
    if a["rotate"] or a["translate"]:
        t = a["translate"] or 0.0
        # Border pixels replicate (a black wedge would be a shortcut feature on X-rays).
        ops.append(
            K.RandomAffine(
                degrees=a["rotate"] or 0.0,
                translate=(t, t) if t else None,
                padding_mode="border",
                p=0.8,
            )
        )
    if a["brightness"] or a["contrast"]:
        ops.append(
            K.ColorJitter(brightness=a["brightness"] or 0.0, contrast=a["contrast"] or 0.0, p=0.8)
        )
    if a["policy"] == "randaugment":
        ops.append(auto.RandAugment(n=2, m=9))
    elif a["policy"] == "trivialaugment":
        ops.append(auto.TrivialAugment())
    if not ops:
        return None
    return nn.Sequential(*ops)


class MixAugment(nn.Module):
    """Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) from kornia, one per batch."""

    def __init__(self, mixup: float, cutmix: float) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.mixup = K.RandomMixUpV2(p=mixup, data_keys=["input", "class"]) if mixup else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kornia's notice about its old lambda
            self.cutmix = (
                K.RandomCutMixV2(p=cutmix, data_keys=["input", "class"], use_correct_lambda=True)
                if cutmix
                else None
            )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images and, when a mix happened, targets (B, 3): label_a, label_b, weight of a."""
        use_cut = self.cutmix is not None and (self.mixup is None or torch.rand(()) < 0.5)
        if use_cut and self.cutmix is not None:
            x2, t = self.cutmix(x, y)
            t = t[0]  # (num_mix=1, B, 3); lambda = share of the original image kept
            return x2, torch.stack([t[:, 0], t[:, 1], t[:, 2]], dim=1)
        if self.mixup is not None:
            x2, t = self.mixup(x, y)
            # kornia's mixup: image = x * (1 - lambda) + paired * lambda.
            return x2, torch.stack([t[:, 0], t[:, 1], 1 - t[:, 2]], dim=1)
        return x, None


def build_mix_augment(spec: Any) -> MixAugment | None:
    a = resolve_augment(spec)
    if not (a["mixup"] or a["cutmix"]):
        return None
    return MixAugment(a["mixup"] or 0.0, a["cutmix"] or 0.0)
