"""Image classification on a tiny random ResNet: data readers and their bad inputs, the
training path (loss falls, metrics beat chance), export round trip, augmentation,
balanced sampling and frozen BatchNorm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from finekit import Recipe, finetune
from finekit.data.splits import read_splits
from finekit.errors import DataError, RecipeError


def toy_images(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Dark noise with a bright 6x6 square: class 1 on the right half, class 0 on the left."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    y = np.arange(n) % 2
    for i in range(n):
        r, c = rng.integers(4, size - 10), rng.integers(0, size // 2 - 6) + (size // 2) * y[i]
        x[i, r : r + 6, c : c + 6] = 230
    return x, y.reshape(-1, 1).astype(np.uint8)


@pytest.fixture(scope="session")
def toy_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("toy-npz")
    tr, va, te = toy_images(160, 0), toy_images(40, 1), toy_images(40, 2)
    np.savez(
        d / "toy.npz",
        train_images=tr[0],
        train_labels=tr[1],
        val_images=va[0],
        val_labels=va[1],
        test_images=te[0],
        test_labels=te[1],
    )
    return d / "toy.npz"


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-stage ResNet with BatchNorm, saved with its image processor (32 px)."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    d = tmp_path_factory.mktemp("tiny-resnet")
    cfg = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_channels=3
    )
    torch.manual_seed(0)
    ResNetForImageClassification(cfg).save_pretrained(d)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def recipe(model: Path, train: Path, out: Path, **over: object) -> dict:
    r: dict = {
        "model": str(model),
        "data": {"train": str(train)},
        "task": {"name": "classify", "label_names": {"0": "left", "1": "right"}},
        "training": {"epochs": 4, "batch_size": 16, "lr": 3e-3, "seed": 0},
        "evaluation": {"train_eval_samples": 32},
        "output": {"dir": str(out)},
    }
    for k, v in over.items():
        r[k] = {**r.get(k, {}), **v} if isinstance(v, dict) else v
    return r


def test_npz_trains_and_export_predicts_identically(tiny_resnet, toy_npz, tmp_path):
    res = finetune(recipe(tiny_resnet, toy_npz, tmp_path / "run"))
    test = res.metrics["test"]
    assert res.summary["data"]["rows"] == {"train": 160, "validation": 40, "test": 40}
    assert test["accuracy"] > 0.85 and test["roc_auc"] > 0.9  # chance is 0.5
    assert test["positive_label"] == "right"
    for k in ("sensitivity", "specificity", "ece", "balanced_accuracy"):
        assert 0.0 <= test[k] <= 1.0
    rows = [
        __import__("json").loads(line)
        for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in rows if "loss" in r and r["split"] == "train"]
    assert len(losses) >= 10 and np.mean(losses[-5:]) < np.mean(losses[:5])
    # Cost: the forward pass counted on real images, priced for compare (no tokens here).
    from finekit.experiments.compare import run_flops

    train = res.summary["train"]
    assert train["tokens_seen"] == 0 and train["forward_flops_per_example"] > 1e5
    flops, rule = run_flops(train, "full")
    assert rule == "measured forward"
    assert flops == pytest.approx(3 * train["forward_flops_per_example"] * train["samples_seen"])
    files = {p.name for p in (res.run_dir / "eval").iterdir()}
    assert {"gradcam_test.png", "roc_test.png", "reliability_test.png"} <= files
    # Reloaded export == the run's own test metrics, example by example.
    from finekit.serve.predict import load_run

    run = load_run(res.run_dir)
    x, y = toy_images(40, 2)
    preds = run.predict(pd.DataFrame({"image": list(x)}))
    saved = pd.read_csv(res.run_dir / "eval" / "predictions_test.csv")
    assert [p["label"] for p in preds] == saved["predicted"].tolist()
    assert np.allclose([p["score"] for p in preds], saved["confidence"], atol=1e-4)
    html = (res.run_dir / "report.html").read_text()
    assert "Clinical metrics" in html and "Grad-CAM" in html.replace("gradcam", "Grad-CAM")
    # The same test images as a saved DatasetDict of files: eval/predict read its test split.
    import datasets
    from PIL import Image

    paths = []
    for i, img in enumerate(x):
        paths.append(str(tmp_path / f"t{i}.png"))
        Image.fromarray(img).save(paths[-1])
    split = {"image": paths, "label": y[:, 0].tolist()}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(split), "test": datasets.Dataset.from_dict(split)}
    ).save_to_disk(str(tmp_path / "dd"))
    from_dd = run.predict(run.read(str(tmp_path / "dd")))
    assert [p["label"] for p in from_dd] == saved["predicted"].tolist()


def test_plain_transformers_loads_the_export(tiny_resnet, toy_npz, tmp_path):
    from transformers import AutoModelForImageClassification

    res = finetune(recipe(tiny_resnet, toy_npz, tmp_path / "run", training={"epochs": 1}))
    model = AutoModelForImageClassification.from_pretrained(res.model_dir)
    assert model.config.id2label == {0: "left", 1: "right"}


def test_folder_and_manifest_inputs(tiny_resnet, tmp_path):
    from PIL import Image

    x, y = toy_images(24, 3)
    root = tmp_path / "folder"
    rows = []
    for i, (img, lab) in enumerate(zip(x, y[:, 0], strict=True)):
        name = "right" if lab else "left"
        (root / name).mkdir(parents=True, exist_ok=True)
        # Mixed modes and sizes: some RGB, some larger; both must be accepted.
        im = Image.fromarray(img)
        if i % 3 == 0:
            im = im.convert("RGB").resize((40, 40))
        im.save(root / name / f"{i}.png")
        rows.append({"file": f"folder/{name}/{i}.png", "label": name})
    spec = Recipe.from_dict(recipe(tiny_resnet, root, tmp_path / "r")).data
    splits = read_splits(spec)
    assert sorted(set(splits.train["label"])) == ["left", "right"] and len(splits.train) == 24
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    r = Recipe.from_dict(
        recipe(
            tiny_resnet, tmp_path / "manifest.csv", tmp_path / "r2", data={"image_column": "file"}
        )
    )
    assert r.task.modality == "image"
    res = finetune(r, training={"epochs": 1})
    info = res.summary["data"]["images"]["train"]
    assert set(info["modes"]) == {"grayscale", "rgb"} and info["distinct_sizes"] == 2


def test_bad_image_inputs_are_named(tiny_resnet, tmp_path):
    x, y = toy_images(12, 4)
    root = tmp_path / "imgs"
    from PIL import Image

    for i, (img, lab) in enumerate(zip(x, y[:, 0], strict=True)):
        (root / str(lab)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / str(lab) / f"{i}.png")
    (root / "0" / "broken.png").write_bytes(b"\x89PNG not really")
    r = recipe(tiny_resnet, root, tmp_path / "run", training={"epochs": 1})
    with pytest.raises(DataError, match=r"broken\.png.*unreadable image.*on_bad_image"):
        finetune(r)
    assert not (tmp_path / "run").exists()  # nothing written before the error
    res = finetune(r, data={"on_bad_image": "skip"})
    assert (
        res.summary["data"]["images"]["train"]["skipped"]
        + res.summary["data"]["images"].get("validation", {}).get("skipped", 0)
        == 1
    )
    # A class folder without images.
    (root / "2").mkdir()
    with pytest.raises(DataError, match=r"class folder .*2 has no images"):
        read_splits(Recipe.from_dict(recipe(tiny_resnet, root, tmp_path / "x")).data)
    # A manifest naming a file that does not exist.
    pd.DataFrame({"path": ["nowhere.png"], "label": ["0"]}).to_csv(tmp_path / "m.csv", index=False)
    m = recipe(tiny_resnet, tmp_path / "m.csv", tmp_path / "y", data={"image_column": "path"})
    with pytest.raises(DataError, match=r"m\.csv: row 1 .*nowhere\.png does not exist"):
        finetune(m)
    # An .npz without the expected arrays.
    np.savez(tmp_path / "odd.npz", pictures=x)
    with pytest.raises(DataError, match=r"odd\.npz.*train_images.*it has \['pictures'\]"):
        read_splits(
            Recipe.from_dict(recipe(tiny_resnet, tmp_path / "odd.npz", tmp_path / "z")).data
        )


def test_augmentation_is_reproducible_and_text_refuses_it(tiny_resnet, toy_npz, tmp_path):
    aug = {"augment": {"preset": "medical", "mixup": 0.5, "cutmix": 0.5}}
    kw = {"training": {"epochs": 1, "batch_size": 32}, "data": aug}
    a = finetune(recipe(tiny_resnet, toy_npz, tmp_path / "a", **kw))
    b = finetune(recipe(tiny_resnet, toy_npz, tmp_path / "b", **kw))
    c = finetune(
        recipe(tiny_resnet, toy_npz, tmp_path / "c", training={"epochs": 1, "batch_size": 32})
    )
    assert a.metrics["test"]["loss"] == b.metrics["test"]["loss"]
    assert a.metrics["test"]["loss"] != c.metrics["test"]["loss"]
    assert a.summary["data"]["augment"]["rotate"] == 10.0
    assert "hflip" not in a.summary["data"]["augment"]  # medical: no flips by default
    with pytest.raises(RecipeError, match="data.augment.hflip is for image data"):
        Recipe.from_dict({"model": "m", "data": {"train": "t.csv", "augment": {"hflip": 0.5}}})


def test_balanced_sampling_draws_classes_evenly():
    from finekit.train.loop import EpochSampler

    labels = [0] * 90 + [1] * 10
    w = [1 / 90 if y == 0 else 1 / 10 for y in labels]
    s = EpochSampler([1] * 100, 8, 0, False, weights=w)
    drawn = [labels[i] for i in list(s) * 1]
    s.set_epoch(1)
    drawn += [labels[i] for i in s]
    assert 0.35 < np.mean(drawn) < 0.65  # vs 0.10 without balancing


def test_frozen_batchnorm_keeps_pretrained_statistics(tiny_resnet, toy_npz, tmp_path):
    from safetensors.torch import load_file

    base = load_file(str(tiny_resnet / "model.safetensors"))
    kw = {"method": {"name": "freeze", "layers": 1}, "training": {"epochs": 1}}
    res = finetune(recipe(tiny_resnet, toy_npz, tmp_path / "eval-bn", **kw))
    after = load_file(str(res.model_dir / "model.safetensors"))
    frozen_stats = [k for k in base if "embedder" in k and k.endswith("running_mean")]
    assert frozen_stats
    for k in frozen_stats:
        assert torch.equal(base[k], after[k]), k
    kw["training"] = {"epochs": 1, "frozen_bn": "train"}
    res2 = finetune(recipe(tiny_resnet, toy_npz, tmp_path / "train-bn", **kw))
    after2 = load_file(str(res2.model_dir / "model.safetensors"))
    assert any(not torch.equal(base[k], after2[k]) for k in frozen_stats)


def test_lora_on_a_cnn_adapts_convolutions_and_merges(tiny_resnet, toy_npz, tmp_path):
    res = finetune(
        recipe(
            tiny_resnet,
            toy_npz,
            tmp_path / "lora",
            method={"name": "lora", "r": 4},
            training={"epochs": 6, "lr": 1e-2},
        )
    )
    tr = res.summary["train"]
    assert tr["trainable_parameters"] < tr["total_parameters"] / 2
    assert res.metrics["test"]["roc_auc"] > 0.75  # the frozen random body alone cannot
    cfg = __import__("json").loads((res.run_dir / "adapter" / "adapter_config.json").read_text())
    assert any("convolution" in t or "conv" in t for t in cfg["target_modules"])
    from finekit.serve.predict import load_run

    x, _ = toy_images(40, 2)
    preds = load_run(res.run_dir).predict(pd.DataFrame({"image": list(x)}))
    saved = pd.read_csv(res.run_dir / "eval" / "predictions_test.csv")
    assert [p["label"] for p in preds] == saved["predicted"].tolist()


def test_forward_flops_scale_with_resolution_and_keep_the_rng(tiny_resnet, toy_npz, tmp_path):
    """A CNN's cost is set by its pixels, not its parameters: doubling the side costs ~4x;
    measuring draws nothing from the run's random streams."""
    import random

    from finekit.run.stages import setup as _setup
    from finekit.train.flops import forward_flops_per_example

    per_example = {}
    for side in (32, 64):
        r = Recipe.from_dict(
            recipe(tiny_resnet, toy_npz, tmp_path / "unused", task={"image_size": side})
        )
        s = _setup(r)
        proc = s.loaded.processor
        train = s.task.encode(s.prepared.splits.train, proc, "train")
        torch.manual_seed(1), random.seed(1), np.random.seed(1)
        per_example[side] = forward_flops_per_example(s.task, s.model, train, s.task.collator(proc))
        after = (torch.rand(1).item(), random.random(), np.random.rand())
        torch.manual_seed(1), random.seed(1), np.random.seed(1)
        assert after == (torch.rand(1).item(), random.random(), np.random.rand())
    assert 3.5 < per_example[64] / per_example[32] < 4.5
