"""`training.auto`: settings derived from the data, the model and the task; a user's value
is kept and reported as overridden; `training.auto: false` is the fixed defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from finekit import Recipe
from finekit.core.contracts import TASKS
from finekit.errors import RecipeError
from finekit.recipe.auto import AUTO_FIELDS, FALLBACK, DataFacts, concrete, resolve

BASE = {"model": "some/model", "data": {"train": "train.csv"}}
MINILM = 22_700_000


def facts(n: int, **kw) -> DataFacts:  # noqa: ANN003
    return DataFacts(
        n_train=n,
        n_validation=kw.pop("n_validation", 100),
        n_classes=kw.pop("n_classes", 7),
        lengths=kw.pop("lengths", [12] * n),
        parameters=kw.pop("parameters", MINILM),
        **kw,
    )


def test_the_schedule_scales_with_the_training_set() -> None:
    few = resolve(Recipe.from_dict(BASE), facts(70)).recipe
    # 70 examples at batch 32: 3 steps an epoch; the 300-step floor needs 100 epochs,
    # validated ~10 times, with early stopping and best-weights restore.
    assert few.training.epochs == 100 and few.training.batch_size == 32
    assert few.evaluation.every_steps == 30 and few.training.checkpoint_every == 30
    assert few.training.checkpoint_each_epoch is False and few.evaluation.patience == 5
    many = resolve(Recipe.from_dict(BASE), facts(9003)).recipe
    assert many.training.epochs == 3 and many.evaluation.every_steps is None
    assert many.evaluation.patience is None and many.training.checkpoint_each_epoch is True
    # No validation split: nothing to stop early on.
    blind = resolve(Recipe.from_dict(BASE), facts(70, n_validation=0)).recipe
    assert blind.evaluation.patience is None


def test_max_length_follows_the_token_lengths_and_the_model() -> None:
    short = resolve(Recipe.from_dict(BASE), facts(100, lengths=[10] * 99 + [40])).recipe
    assert short.training.max_length == 32  # the 99% quantile is 10 tokens
    long = resolve(Recipe.from_dict(BASE), facts(100, lengths=[300] * 100)).recipe
    assert long.training.max_length == 512
    capped = resolve(
        Recipe.from_dict(BASE), facts(100, lengths=[300] * 100, max_positions=256)
    ).recipe
    assert capped.training.max_length == 256


def test_rates_follow_model_size_task_and_method() -> None:
    lr = {
        n: resolve(Recipe.from_dict(BASE), facts(500, parameters=n)).recipe.training.lr
        for n in (MINILM, 110_000_000, 340_000_000)
    }
    assert lr == {MINILM: 1e-4, 110_000_000: 5e-5, 340_000_000: 2e-5}
    head = resolve(Recipe.from_dict(BASE), facts(500)).recipe.training.head_lr
    assert head == 0.1
    regress = resolve(Recipe.from_dict({**BASE, "task": "regress"}), facts(500)).recipe
    assert regress.training.head_lr == 1e-3  # one output on standardised targets
    lora = resolve(Recipe.from_dict({**BASE, "method": "lora"}), facts(500)).recipe
    assert lora.training.lr == 5e-4  # adapters: ~10x, within 2e-4..5e-4
    chat = resolve(
        Recipe.from_dict({**BASE, "task": "chat", "method": "lora"}),
        facts(450, lengths=[300] * 450),
    ).recipe
    assert chat.training.lr == 2e-4 and chat.training.batch_size == 8
    assert chat.training.epochs == 2 and chat.evaluation.patience is None


def test_images_with_batchnorm_take_the_cnn_rates() -> None:
    r = Recipe.from_dict({**BASE, "task": {"name": "classify", "modality": "image"}})
    out = resolve(r, facts(2428, lengths=None, parameters=4_650_000, batchnorm=True)).recipe
    assert (out.training.lr, out.training.head_lr) == (5e-4, 3e-3)
    assert out.training.epochs == 8  # 76 steps an epoch; the 600-step floor
    assert out.training.max_length == FALLBACK["training.max_length"]  # no tokens
    assert out.task.image_size is None  # sides unknown: the processor's size
    small = resolve(
        r, facts(2428, lengths=None, parameters=4_650_000, batchnorm=True, image_sides=[28] * 9)
    ).recipe
    assert small.task.image_size == 64  # 28 px X-rays: ~2x, as measured
    vit = resolve(r, facts(2428, lengths=None, parameters=5_000_000, image_sides=[28] * 9))
    assert vit.recipe.task.image_size is None  # a ViT keeps its processor's size


def test_a_user_setting_is_kept_and_reported_as_overridden() -> None:
    r = Recipe.from_dict({**BASE, "training": {"lr": 3e-5, "epochs": 2}})
    res = resolve(r, facts(70))
    assert res.recipe.training.lr == 3e-5 and res.recipe.training.epochs == 2
    assert res.overridden["training.lr"] == {
        "yours": 3e-5,
        "auto": 1e-4,
        "reason": res.overridden["training.lr"]["reason"],
    }
    assert res.overridden["training.epochs"]["auto"] == 100
    assert "training.lr" not in res.chosen
    # The rest is derived from the user's values: 2 epochs of 3 steps = 6 steps, under 10
    # evaluations' worth, so validation stays per epoch.
    assert res.recipe.evaluation.every_steps is None
    assert any("yours; auto would choose 0.0001" in line for line in res.lines())


def test_auto_off_is_the_fixed_defaults_for_every_field() -> None:
    res = resolve(Recipe.from_dict({**BASE, "training": {"auto": False, "lr": 3e-5}}), facts(70))
    for f in AUTO_FIELDS:
        section, name = f.split(".")
        value = getattr(getattr(res.recipe, section), name)
        assert value == (3e-5 if f == "training.lr" else FALLBACK[f]), f
    assert res.overridden == {}
    assert res.to_json()["enabled"] is False


def test_every_builtin_task_declares_rules_with_sources() -> None:
    for name in ("classify", "causal_lm", "masked_lm", "chat", "regress"):
        assert name in TASKS
        section = {"name": name, **({"modality": "text"} if name == "classify" else {})}
        r = Recipe.from_dict({**BASE, "task": section})
        res = resolve(r, facts(1000, lengths=[100] * 1000))
        for f in ("training.lr", "training.epochs", "training.batch_size"):
            c = res.chosen[f]
            assert c.source != "FALLBACK" and c.reason, (name, f)


def test_an_unresolved_field_names_itself() -> None:
    with pytest.raises(RecipeError, match=r"training\.lr is still `auto`"):
        concrete("auto", "training.lr")
    assert concrete(3e-5, "training.lr") == 3e-5


def test_a_run_records_its_choices_and_stores_the_resolved_recipe(tiny_recipe: Recipe) -> None:
    from finekit import finetune

    r = tiny_recipe.with_overrides(
        {"training.auto": True, "training.epochs": "auto", "training.max_steps": 4}
    )
    res = finetune(r)
    run = json.loads((res.run_dir / "run.json").read_text())
    chosen = run["auto"]["chosen"]
    assert run["auto"]["enabled"] is True
    assert chosen["training.max_length"]["value"] == 32  # the toy texts are short
    assert chosen["training.head_lr"]["value"] == 0.1 and chosen["training.head_lr"]["source"]
    # lr 1e-3 was set by the user: kept, and what auto would have chosen is on record.
    assert run["auto"]["overridden"]["training.lr"]["yours"] == 1e-3
    assert run["auto"]["facts"]["n_train"] > 0
    stored = yaml.safe_load((res.run_dir / "recipe.yaml").read_text())
    assert stored["training"]["max_length"] == 32 and stored["training"]["head_lr"] == 0.1
    assert "auto:" in (res.run_dir / "train.log").read_text()
    # Resuming with the user's (auto) recipe is the same recipe.
    again = finetune(r, resume=True)
    assert again.run_dir == res.run_dir


def test_the_recipe_shows_auto_and_round_trips(tmp_path: Path) -> None:
    r = Recipe.from_dict(BASE)
    text = r.to_yaml()
    assert "lr: auto" in text and "epochs: auto" in text
    (tmp_path / "r.yaml").write_text(text)
    again = Recipe.from_yaml(tmp_path / "r.yaml")
    assert again.with_overrides({"data.train": "train.csv"}) == r
    with pytest.raises(RecipeError, match=r"training\.lr"):
        Recipe.from_dict({**BASE, "training": {"lr": "fast"}})
