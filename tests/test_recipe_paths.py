"""Recipes that run outside this repository: paths relative to the recipe file, named data
sets found under --data-dir / FINEKIT_DATA, and one line naming what to download."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from finekit import Recipe
from finekit.errors import DataError
from finekit.recipe.paths import DATA_ENV

DATASET = {
    "name": "intents",
    "hf_id": "someone/intents",
    "url": "https://example.org/intents",
    "licence": "CC BY 4.0",
}


def write(path: Path, recipe: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_relative_paths_resolve_against_the_recipe_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(
        tmp_path / "project" / "recipes" / "r.yaml",
        {
            "model": "org/model",  # a hub id: left alone
            "data": {"train": "../data/train.csv", "test": "hf://glue/sst2"},
            "evaluation": {"guard": [{"name": "old", "path": "guard.csv"}]},
        },
    )
    monkeypatch.chdir(tmp_path)  # anywhere else
    r = Recipe.from_yaml(f)
    assert r.data.train == str(tmp_path / "project" / "data" / "train.csv")
    assert r.data.test == "hf://glue/sst2" and r.model.path == "org/model"
    assert r.evaluation.guard[0].path == str(tmp_path / "project" / "recipes" / "guard.csv")
    # A path given on the command line is the working directory's.
    r2 = Recipe.from_yaml(f, overrides=["data.train=mine.csv"])
    assert r2.data.train == str(tmp_path / "mine.csv")


def test_a_named_data_set_is_found_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = {"model": "org/model", "data": {"dataset": DATASET, "train": "train.csv"}}
    f = write(tmp_path / "recipes" / "r.yaml", recipe)
    (tmp_path / "store" / "intents").mkdir(parents=True)
    (tmp_path / "store" / "intents" / "train.csv").write_text("text,label\na,b\n")
    r = Recipe.from_yaml(f, data_dir=tmp_path / "store")
    assert r.data.train == str(tmp_path / "store" / "intents" / "train.csv")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "store"))
    assert Recipe.from_yaml(f).data.train == r.data.train
    # The resolved recipe (as a run directory stores it) loads again without the data dir.
    monkeypatch.delenv(DATA_ENV)
    stored = write(tmp_path / "run" / "recipe.yaml", r.to_dict())
    assert Recipe.from_yaml(stored).data.train == r.data.train


def test_a_missing_data_set_says_what_to_download_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    recipe = {
        "model": "org/model",
        "data": {"dataset": DATASET, "train": "train.csv", "test": "test.csv"},
    }
    f = write(tmp_path / "r.yaml", recipe)
    with pytest.raises(DataError) as e:
        Recipe.from_yaml(f)
    msg = str(e.value)
    assert "\n" not in msg
    for part in (
        "data set 'intents' not found",
        "https://huggingface.co/datasets/someone/intents",
        "https://example.org/intents",
        "licence: CC BY 4.0",
        f"put train.csv, test.csv in {tmp_path / 'nowhere' / 'intents'}/",
        "--data-dir",
        DATA_ENV,
    ):
        assert part in msg, part


def test_shipped_recipes_name_their_data_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv(DATA_ENV, "/nonexistent")
    for path in sorted((root / "recipes").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "dataset" not in raw["data"]:
            continue  # stsb: files that benchmarks/stsb.py prepares
        with pytest.raises(DataError, match=r"licence: .*put .* in /nonexistent/"):
            Recipe.from_yaml(path)


def test_paths_from_flags_are_stored_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run directory's recipe reads the same from anywhere: flags and dict paths are the
    working directory's, made absolute before they are stored."""
    from finekit.run import make_recipe

    monkeypatch.chdir(tmp_path)
    r = make_recipe({"model": "org/model", "data": {"train": "train.csv"}})
    assert r.data.train == str(tmp_path / "train.csv")
    stored = write(tmp_path / "runs" / "x" / "recipe.yaml", r.to_dict())
    monkeypatch.chdir("/")
    assert Recipe.from_yaml(stored).data.train == str(tmp_path / "train.csv")


def test_flags_replace_a_named_data_set_s_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finekit.cli import _build_recipe

    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    f = write(
        tmp_path / "r.yaml",
        {"model": "org/model", "data": {"dataset": DATASET, "train": "train.csv"}},
    )
    r = _build_recipe(f, None, {"data": {"train": "mine.csv"}})
    assert r.data.train == str(tmp_path / "mine.csv")  # the data set is not looked for
    r2 = _build_recipe(f, ["data.train=other.csv"], {})
    assert r2.data.train == str(tmp_path / "other.csv")
