"""Early stopping, the overfitting alarm and best-checkpoint restore, on a setup built to
overfit: random labels (nothing to learn but the training rows themselves)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
from conftest import CLASS_WORDS, FILLER

from finekit import Recipe, finetune


def _random_label_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    words = [w for ws in CLASS_WORDS.values() for w in ws] + FILLER
    return [
        {"text": " ".join(rng.sample(words, 5)), "label": rng.choice(["a", "b", "c"])}
        for _ in range(n)
    ]


@pytest.fixture()
def overfit_recipe(tiny_recipe: Recipe, tmp_path: Path) -> Recipe:
    pd.DataFrame(_random_label_rows(90, 1)).to_csv(tmp_path / "noise.csv", index=False)
    return tiny_recipe.with_overrides(
        {
            "data.train": str(tmp_path / "noise.csv"),
            "data.test": None,
            "data.validation_fraction": 0.3,
            "training.epochs": 60,
            "training.lr": 3e-3,
            "training.batch_size": 8,
            "evaluation.metric": "loss",
            "evaluation.patience": 3,
            "evaluation.train_eval_samples": 64,
        }
    )


def test_early_stopping_alarm_and_best_restore(overfit_recipe: Recipe) -> None:
    result = finetune(overfit_recipe)
    run = result.summary
    es, of = run["early_stopping"], run["overfitting"]
    print(json.dumps({"early_stopping": es, "overfitting": of}, indent=1))
    steps_per_epoch = 8  # 63 training rows / batch 8
    assert es["stopped_at"] is not None and es["stopped_at"] < 60 * steps_per_epoch
    assert es["mode"] == "min" and es["bad_evals"] == 3
    # The alarm names the step where validation peaked, i.e. where the gap began to widen.
    assert of["detected"] and of["step"] == es["best_step"]
    assert of["gap_now"] > of["gap_at_best"]
    assert run["alarms"] and "overfitting" in run["alarms"][0]
    # The exported model is the best-validation one, not the last.
    assert run["restored_best"]["step"] == es["best_step"]
    assert result.metrics["validation"]["loss"] == pytest.approx(es["best"], abs=1e-4)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    last_val = [x for x in rows if x["split"] == "validation"][-1]
    assert last_val["loss"] > es["best"] + 1e-3  # the last weights were worse
    html = (result.run_dir / "report.html").read_text()
    assert "overfitting: validation loss peaked at step" in html


def test_without_patience_training_runs_to_the_end(overfit_recipe: Recipe) -> None:
    r = overfit_recipe.with_overrides({"evaluation.patience": None, "training.epochs": 3})
    result = finetune(r)
    assert result.summary["early_stopping"]["stopped_at"] is None
    assert result.summary["restored_best"] is None
    assert result.train["epochs"] == 3
