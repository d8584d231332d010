"""Repeated runs for small data: `finekit train RECIPE --seeds N` / `finetune_seeds`
writes one normal run per seed and seeds.json with mean ± std over the real values."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from finekit import Recipe, finetune_seeds
from finekit.errors import RecipeError, RunDirError
from finekit.experiments.seeds import SEEDS_JSON, aggregate_metrics


def test_seeds_write_runs_and_aggregate_the_real_values(tiny_recipe: Recipe, tmp_path: Path):
    r = tiny_recipe.with_overrides({"training.epochs": 2, "training.seed": 5})
    out = tmp_path / "seeds"
    logs: list[str] = []
    result = finetune_seeds(r, seeds=2, output=out, echo=logs.append)
    assert result["seeds"] == [5, 6]
    runs = [json.loads((out / f"seed-{s}" / "run.json").read_text()) for s in (5, 6)]
    assert all(x["status"] == "completed" for x in runs)
    assert Recipe.from_yaml(out / "seed-6" / "recipe.yaml").training.seed == 6
    assert (out / "seed-5" / "model").is_dir() and (out / "seed-6" / "recipe.yaml").is_file()
    saved = json.loads((out / SEEDS_JSON).read_text())
    assert saved == json.loads(json.dumps(result))
    for split in ("validation", "test"):
        for metric in ("accuracy", "macro_f1", "loss"):
            cell = saved["metrics"][split][metric]
            values = [x["metrics"][split][metric] for x in runs]
            assert cell["values"] == values
            assert cell["mean"] == pytest.approx(statistics.fmean(values))
            assert cell["std"] == pytest.approx(statistics.stdev(values))
    # Different seeds really differ (else a std of 0 would prove nothing).
    assert saved["metrics"]["test"]["loss"]["std"] > 0
    assert "per_class" not in saved["metrics"]["test"]  # numbers only
    table = logs[-1]
    assert "mean ± std" in table and "accuracy" in table and "test" in table
    acc = saved["metrics"]["test"]["accuracy"]
    assert f"{acc['mean']:.4f} ± {acc['std']:.4f}" in table

    # Rerun: both seeds are skipped, nothing retrains.
    stamp = (out / "seed-5" / "run.json").stat().st_mtime_ns
    logs.clear()
    again = finetune_seeds(r, seeds=2, output=out, echo=logs.append)
    assert sum("skipped" in line for line in logs) == 2
    assert (out / "seed-5" / "run.json").stat().st_mtime_ns == stamp
    assert again["metrics"] == result["metrics"]
    # One more seed trains only the new one.
    logs.clear()
    three = finetune_seeds(r, seeds=3, output=out, echo=logs.append)
    assert sum("skipped" in line for line in logs) == 2 and three["seeds"] == [5, 6, 7]
    assert len(three["metrics"]["test"]["accuracy"]["values"]) == 3
    # Another recipe in the same folder is refused.
    with pytest.raises(RunDirError, match=r"another recipe .*training\.lr"):
        finetune_seeds(r.with_overrides({"training.lr": 0.5}), seeds=2, output=out)


def test_aggregate_uses_sample_std_and_only_shared_numbers():
    per_run = [
        {"test": {"accuracy": 0.5, "per_class": {}, "flag": True, "n": 10}},
        {"test": {"accuracy": 0.7, "per_class": {}, "flag": False, "n": 10}},
        {"test": {"accuracy": 0.9, "per_class": {}, "flag": True}},
    ]
    m = aggregate_metrics(per_run)
    assert set(m) == {"test"} and set(m["test"]) == {"accuracy"}  # n is missing in one run
    assert m["test"]["accuracy"]["mean"] == pytest.approx(0.7)
    assert m["test"]["accuracy"]["std"] == pytest.approx(0.2)  # n - 1, not n (0.163)
    one = aggregate_metrics([{"validation": {"accuracy": 0.4}}])
    assert one["validation"]["accuracy"] == {"mean": 0.4, "std": 0.0, "values": [0.4]}


@pytest.mark.parametrize("bad", [0, -1])
def test_seeds_below_one_is_an_error(tiny_recipe: Recipe, tmp_path: Path, bad: int):
    with pytest.raises(RecipeError, match="--seeds must be a whole number >= 1"):
        finetune_seeds(tiny_recipe, seeds=bad, output=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_cli_train_seeds(
    tiny_recipe: Recipe, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from finekit.cli import main

    recipe = tmp_path / "r.yaml"
    tiny_recipe.with_overrides({"training.epochs": 1, "output.dir": None}).to_yaml(recipe)
    out = tmp_path / "cli-seeds"
    assert main(["train", str(recipe), "--seeds", "0", "--output", str(out)]) == 2
    assert "--seeds must be a whole number >= 1" in capsys.readouterr().err
    assert not out.exists()
    assert main(["train", str(recipe), "--seeds", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "seed-42" / "model").is_dir() and (out / "seed-43" / "model").is_dir()
    assert "mean ± std" in printed and "accuracy" in printed
    assert main(["train", str(recipe), "--seeds", "2", "--resume", str(out)]) == 2
    assert "--seeds resumes by itself" in capsys.readouterr().err
