"""Methods that limit forgetting: BitFit, gradual unfreezing, layer-wise LR decay."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import CrashAtStep

from finekit import Recipe, finetune
from finekit.models import family_for
from finekit.recipe import ModelSpec
from finekit.tasks import HeadSpec
from finekit.train.callbacks import CallbackError
from finekit.train.loop import param_groups


def test_bitfit_adapts_a_trained_model_with_biases_and_head(
    tiny_recipe: Recipe, toy_data, tmp_path: Path
) -> None:
    import pandas as pd

    # A "pre-trained" base with useful features: the tiny model fine-tuned on the toy task.
    base = finetune(tiny_recipe.with_overrides({"output.dir": str(tmp_path / "base")}))
    # A new labelling of the same task: the loaded head's rows no longer match the classes.
    names = {"card": "z_card", "hours": "a_hours", "refund": "m_refund"}
    for split in ("train", "test"):
        df = pd.read_csv(toy_data[split])
        df.assign(label=df["label"].map(names)).to_csv(tmp_path / f"{split}.csv", index=False)
    r = tiny_recipe.with_overrides(
        {
            "model.path": str(base.model_dir),
            "method": "bitfit",
            "training.lr": 1e-2,
            "data.train": str(tmp_path / "train.csv"),
            "data.test": str(tmp_path / "test.csv"),
            "output.dir": str(tmp_path / "bitfit"),
        }
    )
    result = finetune(r)
    t = result.train
    assert t["trainable_parameters"] < 0.05 * t["total_parameters"]
    assert result.metrics["test"]["accuracy"] > 0.9
    # Only biases and the head moved: every other weight equals the base model's.
    from safetensors.torch import load_file

    a = load_file(str(base.model_dir / "model.safetensors"))
    b = load_file(str(result.model_dir / "model.safetensors"))
    moved = [
        k
        for k in a
        if not k.endswith("bias") and not k.startswith("classifier") and not (a[k] == b[k]).all()
    ]
    assert moved == []


def test_layer_decay_rates(tiny_model_dir: Path, tiny_recipe: Recipe) -> None:
    spec = ModelSpec(path=str(tiny_model_dir))
    fam = family_for(spec)
    model = fam.load(spec, HeadSpec("sequence-classification", 3)).model
    tr = tiny_recipe.with_overrides(
        {"training.layer_decay": 0.5, "training.lr": 1.0e-3, "training.head_lr": 1e-2}
    ).training
    groups = param_groups(model, tr, fam.layer_groups(model))
    rate = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            rate[names[id(p)]] = g["lr"]
    assert rate["classifier.weight"] == pytest.approx(1e-2)
    assert rate["bert.pooler.dense.weight"] == pytest.approx(1e-3)
    assert rate["bert.encoder.layer.1.output.dense.weight"] == pytest.approx(5e-4)
    assert rate["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(2.5e-4)
    assert rate["bert.embeddings.word_embeddings.weight"] == pytest.approx(1.25e-4)
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert all(p.ndim < 2 for g in no_decay for p in g["params"])


class Spy:
    """Records, after each step, which blocks have requires_grad."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[bool, bool, bool]] = {}

    def on_step_end(self, state, control) -> None:
        m = state.model
        named = dict(m.named_parameters())
        self.seen[state.progress.step] = (
            named["bert.encoder.layer.1.output.dense.weight"].requires_grad,
            named["bert.encoder.layer.0.output.dense.weight"].requires_grad,
            named["bert.embeddings.word_embeddings.weight"].requires_grad,
        )


def test_gradual_unfreezing_opens_top_down(tiny_recipe: Recipe) -> None:
    spy = Spy()
    r = tiny_recipe.with_overrides({"method": {"name": "gradual_unfreeze", "every_steps": 5}})
    result = finetune(r, callbacks=[spy])
    # The callback order: the unfreezer runs before user callbacks at each step end.
    assert spy.seen[1] == (False, False, False)  # head (+ pooler) only
    assert spy.seen[5] == (True, False, False)  # the top block
    assert spy.seen[10] == (True, True, False)  # then the next; embeddings stay frozen
    assert result.metrics["test"]["accuracy"] > 0.6


def test_gradual_unfreezing_survives_resume(tiny_recipe: Recipe, tmp_path: Path) -> None:
    r = tiny_recipe.with_overrides(
        {
            "method": {"name": "gradual_unfreeze", "every_steps": 6},
            "training.epochs": 2,
            "training.checkpoint_every": 4,
        }
    )
    full = finetune(r.with_overrides({"output.dir": str(tmp_path / "full")}))
    broken = r.with_overrides({"output.dir": str(tmp_path / "broken")})
    with pytest.raises(CallbackError):
        finetune(broken, callbacks=[CrashAtStep(10)])
    resumed = finetune(broken, resume=True)
    assert resumed.train["resumed_from"].endswith("step-00000008")
    assert resumed.metrics["test"] == full.metrics["test"]
    assert resumed.metrics["validation"] == full.metrics["validation"]


def test_schedule_longer_than_training_warns(
    tiny_recipe: Recipe, caplog: pytest.LogCaptureFixture
) -> None:
    r = tiny_recipe.with_overrides(
        {"method": {"name": "gradual_unfreeze", "every_epochs": 5}, "training.epochs": 1}
    )
    with caplog.at_level(logging.WARNING, logger="finekit"):
        finetune(r)
    assert "the lowest blocks will never train" in caplog.text


def test_l2sp_keeps_the_body_closer_to_the_base(tiny_recipe: Recipe, tmp_path: Path) -> None:
    r = tiny_recipe.with_overrides({"training.epochs": 3})
    plain = finetune(
        r.with_overrides({"output.dir": str(tmp_path / "plain"), "training.l2sp": 1e-6})
    )
    pulled = finetune(
        r.with_overrides({"output.dir": str(tmp_path / "l2sp"), "training.l2sp": 10.0})
    )
    d_plain = plain.summary["regularisers"]["l2sp"]["distance_to_base"]
    d_pulled = pulled.summary["regularisers"]["l2sp"]["distance_to_base"]
    assert 0 < d_pulled < 0.5 * d_plain, (d_plain, d_pulled)
    import json

    rows = [json.loads(x) for x in (pulled.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(x["penalty"] >= 0 for x in rows if x["split"] == "train")
