"""Task `regress`: a number from a text (pair) — learns, exports, reloads, predicts in the
target's unit, is refused where its input is wrong, and runs in compare's ladder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CLASS_WORDS, FILLER

from finekit import Recipe, finetune
from finekit.errors import DataError, RecipeError
from finekit.experiments.compare import compare
from finekit.serve.predict import load_run

SIGNAL = CLASS_WORDS["refund"]  # each of these words in the pair adds 10 to the score


def _rows(n: int, seed: int) -> pd.DataFrame:
    """score = 10 * (signal words in the second text) + 50 + noise: the first text is
    filler, so a model that ignores the pair cannot beat the mean."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 4)
        words = rng.sample(SIGNAL, k) + rng.sample(FILLER, 4 - k)
        rng.shuffle(words)
        rows.append(
            {
                "first": " ".join(rng.sample(FILLER, 3)),
                "second": " ".join(words),
                "score": 50.0 + 10.0 * k + rng.gauss(0.0, 1.0),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture()
def regress_recipe(tiny_recipe: Recipe, tmp_path: Path) -> Recipe:
    _rows(240, seed=1).to_csv(tmp_path / "train.csv", index=False)
    _rows(60, seed=2).to_csv(tmp_path / "test.csv", index=False)
    data = tiny_recipe.to_dict()
    data["task"] = {"name": "regress"}
    data["evaluation"] = {"retention": "off"}
    data["data"] = {
        "train": str(tmp_path / "train.csv"),
        "test": str(tmp_path / "test.csv"),
        "text_column": "first",
        "text_pair_column": "second",
        "label_column": "score",
    }
    data["training"].update(epochs=8, lr=2e-3, head_lr=1e-2)
    data["output"] = {"dir": str(tmp_path / "regress-run")}
    return Recipe.from_dict(data)


def test_defaults_come_from_the_task(regress_recipe: Recipe) -> None:
    assert regress_recipe.evaluation.metric == "rmse"
    assert regress_recipe.evaluation.resolved_mode() == "min"
    with pytest.raises(RecipeError, match="k_per_class needs a task with classes"):
        regress_recipe.with_overrides({"data.k_per_class": 5})
    with pytest.raises(RecipeError, match="does not support augmentation"):
        regress_recipe.with_overrides({"data.augment.preset": "light"})
    with pytest.raises(RecipeError, match="not a regress metric"):
        finetune(regress_recipe.with_overrides({"evaluation.metric": "accuracy"}))


def test_learns_the_target_and_reloads_to_the_same_predictions(regress_recipe: Recipe) -> None:
    res = finetune(regress_recipe)
    test = res.metrics["test"]
    truth = _rows(60, seed=2)["score"].to_numpy()
    mean_rmse = float(np.sqrt(((truth - truth.mean()) ** 2).mean()))  # predicting the mean
    assert test["rmse"] < 0.5 * mean_rmse, (test, mean_rmse)
    assert test["spearman"] > 0.8 and test["mae"] < test["rmse"] + 1e-9
    run = json.loads((res.run_dir / "run.json").read_text())
    assert run["task"] == "regress" and run["data"]["target_train"]["min"] > 40
    assert (res.run_dir / "eval" / "scatter_test.png").stat().st_size > 5_000
    assert "scatter test" in (res.run_dir / "report.html").read_text()  # the report shows it
    # The export is a plain transformers regression head: one output, problem_type set.
    config = json.loads((res.model_dir / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    # Reloaded, it predicts in the target's unit exactly what the run's evaluation wrote.
    rows = pd.read_csv(regress_recipe.data.test)
    got = [p["value"] for p in load_run(res.run_dir).predict(rows)]
    written = pd.read_csv(res.run_dir / "eval" / "predictions_test.csv")["predicted"]
    np.testing.assert_allclose(got, written.to_numpy(), rtol=1e-5, atol=1e-4)
    assert 40 < float(np.mean(got)) < 100  # not standardised units


def test_compare_trains_the_scratch_twin_and_scores_rmse(
    regress_recipe: Recipe, tmp_path: Path
) -> None:
    # The tiny "pre-trained" body is random too, so only the ladder's mechanics are tested
    # here: the scratch twin and the recipe each train, are scored on rmse (lower better).
    out = compare(
        regress_recipe.with_overrides({"training.epochs": 2}),
        "scratch",
        "full",
        1,
        tmp_path / "cmp",
        echo=lambda s: None,
        min_steps=1,
    )
    cells = {c["rung"]: c for c in out["cells"]}
    assert set(cells) == {"recipe", "scratch"}
    assert out["metric"] == "rmse" and out["higher_is_better"] is False
    assert out["split"] == "test" and all(c["mean"] > 0 for c in cells.values())


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("high", r"'score' must hold numbers for task regress; 1 row\(s\) do not"),
        ("", r"column 'score' is empty in 1 row\(s\) \(data rows \[3\]"),
    ],
)
def test_a_target_that_is_not_a_number_is_named(
    regress_recipe: Recipe, tmp_path: Path, cell: str, message: str
) -> None:
    bad = _rows(30, seed=3)
    bad["score"] = bad["score"].astype(object)
    bad.loc[2, "score"] = cell
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=message):
        finetune(regress_recipe.with_overrides({"data.train": str(tmp_path / "bad.csv")}))
    assert not (tmp_path / "regress-run").exists()  # refused before anything was written


def test_a_constant_target_is_refused(regress_recipe: Recipe, tmp_path: Path) -> None:
    flat = _rows(30, seed=3).assign(score=3.0)
    flat.to_csv(tmp_path / "flat.csv", index=False)
    with pytest.raises(DataError, match="at least two different values"):
        finetune(regress_recipe.with_overrides({"data.train": str(tmp_path / "flat.csv")}))


def test_a_task_change_takes_the_new_task_s_default_metric(regress_recipe: Recipe) -> None:
    as_classify = regress_recipe.with_overrides({"task": "classify"})
    assert as_classify.evaluation.metric == "accuracy"
    assert as_classify.with_overrides({"task": "regress"}).evaluation.metric == "rmse"
    # A metric the user named stays (and a task without it says so when the run starts).
    chosen = regress_recipe.with_overrides({"evaluation.metric": "spearman"})
    assert (
        chosen.with_overrides({"task": {"name": "regress", "loss": "huber"}}).evaluation.metric
        == "spearman"
    )
