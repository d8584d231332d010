from __future__ import annotations

from pathlib import Path

import pytest

from finekit import Recipe
from finekit.errors import RecipeError

BASE = {"model": "some/model", "data": {"train": "train.csv"}}


def test_defaults_are_filled_and_round_trip(tmp_path: Path) -> None:
    r = Recipe.from_dict(BASE)
    assert r.task.name == "classify" and r.method.name == "full"
    assert r.training.precision == "auto" and r.training.lr == "auto"  # chosen per run
    r.to_yaml(tmp_path / "r.yaml")
    again = Recipe.from_yaml(tmp_path / "r.yaml")
    # A relative path in a recipe file is relative to the file's folder.
    assert again.data.train == str(tmp_path / "train.csv")
    assert again.with_overrides({"data.train": "train.csv"}) == r


def test_unknown_key_names_field_and_allowed() -> None:
    with pytest.raises(RecipeError, match=r"unknown field 'training\.lrr'.*allowed: auto, epochs"):
        Recipe.from_dict({**BASE, "training": {"lrr": 1}})


def test_wrong_value_names_field_and_allowed_values() -> None:
    with pytest.raises(RecipeError, match=r"training\.precision.*'auto', 'fp32', 'bf16' or 'fp16'"):
        Recipe.from_dict({**BASE, "training": {"precision": "fp8"}})
    with pytest.raises(RecipeError, match=r"training\.lr.*greater than 0"):
        Recipe.from_dict({**BASE, "training": {"lr": -1}})


def test_missing_required_field() -> None:
    with pytest.raises(RecipeError, match="missing required field 'model'"):
        Recipe.from_dict({"data": {"train": "x.csv"}})


def test_method_sections_come_from_the_registry() -> None:
    r = Recipe.from_dict({**BASE, "method": {"name": "lora", "r": 4}})
    assert r.method.r == 4 and r.method.alpha == 16  # type: ignore[attr-defined]
    with pytest.raises(RecipeError, match=r"unknown field 'method\.rank'.*allowed: name, r, alpha"):
        Recipe.from_dict({**BASE, "method": {"name": "lora", "rank": 4}})
    with pytest.raises(RecipeError, match="unknown method 'nope'; registered: .*freeze.*lora"):
        Recipe.from_dict({**BASE, "method": "nope"})


def test_overrides_parse_values_and_switch_methods() -> None:
    r = Recipe.from_dict({**BASE, "method": {"name": "lora", "r": 4}})
    r2 = r.with_overrides(
        [
            "training.lr=3e-5",
            "method=freeze",
            "method.layers=1",
            "data.k_per_class=10",
            "method.patterns=[foo, bar]",
        ]
    )
    assert r2.training.lr == pytest.approx(3e-5)
    assert r2.method.name == "freeze" and r2.method.layers == 1  # type: ignore[attr-defined]
    assert r2.method.patterns == ["foo", "bar"]  # type: ignore[attr-defined]
    assert r2.data.k_per_class == 10
    with pytest.raises(RecipeError, match="expected FIELD=VALUE"):
        r.with_overrides(["training.lr"])


def test_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(RecipeError, match="not valid UTF-8 YAML"):
        Recipe.from_yaml(bad)


def test_shipped_recipes_validate() -> None:
    for path in (Path(__file__).parents[1] / "recipes").glob("*.yaml"):
        assert Recipe.from_yaml(path).name == path.stem
