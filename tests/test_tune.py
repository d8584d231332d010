"""--auto-tune: N settings tried on validation (Optuna), the test split never read while
choosing, the study resumable, the search in run.json and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from finekit import Recipe
from finekit.errors import RecipeError

pytest.importorskip("optuna")


def test_auto_tune_chooses_on_validation_and_never_reads_the_test(
    tiny_recipe: Recipe, toy_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finekit import tune
    from finekit.data import splits as splits_mod

    # A planted test file: every read of it is counted.
    test_file = tmp_path / "planted_test.csv"
    pd.read_csv(toy_data["test"]).to_csv(test_file, index=False)
    reads: list[str] = []
    real = splits_mod.read_table

    phase = ["search"]

    def counting(path, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        reads.append(f"{phase[0]}:{path}")
        return real(path, *a, **kw)

    from finekit.experiments import tune as tune_mod

    real_plot = tune_mod.trials_plot

    def plot_then_final(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        real_plot(*a, **kw)
        phase[0] = "final"  # the search is over: the chosen setting trains next

    monkeypatch.setattr(splits_mod, "read_table", counting)
    monkeypatch.setattr(tune_mod, "trials_plot", plot_then_final)
    out = tmp_path / "tuned"
    r = tiny_recipe.with_overrides(
        {
            "data.test": str(test_file),
            "training.epochs": 2,
            "training.auto_tune": 3,
            "output.dir": str(out),
        }
    )
    lines: list[str] = []
    result = tune(r, echo=lines.append)
    trials = json.loads((out / "tune" / "trials.json").read_text())
    assert len(trials["trials"]) == 3 and trials["trials"][0]["origin"] == "auto"
    assert trials["trials"][0]["params"]["lr"] == pytest.approx(1e-3)  # the user's value
    values = [t["value"] for t in trials["trials"]]
    assert trials["best_value"] == max(values) >= trials["default_value"]
    for k in range(3):  # no trial scored (or encoded) a test split
        run = json.loads((out / "tune" / f"trial-{k}" / "run.json").read_text())
        assert "test" not in run["metrics"] and "validation" in run["metrics"]
    # The test file was never read while choosing; the final run read it.
    assert f"search:{test_file}" not in reads and f"final:{test_file}" in reads
    assert any(x.startswith("search:") for x in reads)
    final = json.loads((out / "run.json").read_text())
    assert final["status"] == "completed" and "test" in final["metrics"]
    assert final["auto_tune"]["best_trial"] == trials["best_trial"]
    assert result.run_dir == out
    assert (out / "tune" / "trials.png").is_file() and (out / "tune" / "study.db").is_file()
    from finekit import write_report

    html = write_report(out).read_text()
    assert "Auto-tune (chosen on validation)" in html and "Settings chosen from the data" in html

    # Rerunning resumes the study: no new trial, the finished run is returned.
    again = tune(r, echo=lines.append)
    assert len(json.loads((out / "tune" / "trials.json").read_text())["trials"]) == 3
    assert again.metrics["test"] == result.metrics["test"]


def test_a_test_fraction_is_held_out_but_not_scored_by_trials(tiny_recipe: Recipe) -> None:
    from finekit import finetune

    r = tiny_recipe.with_overrides(
        {
            "data.test": None,
            "data.test_fraction": 0.2,
            "evaluation.score_test": False,
            "training.epochs": 1,
        }
    )
    res = finetune(r)
    assert "test" not in res.metrics and res.summary["data"]["sources"].get("test")


def test_finetune_refuses_auto_tune_and_needs_validation(tiny_recipe: Recipe) -> None:
    from finekit import finetune, tune

    with pytest.raises(RecipeError, match="finekit.tune"):
        finetune(tiny_recipe.with_overrides({"training.auto_tune": 4}))
    no_val = tiny_recipe.with_overrides({"training.auto_tune": 4, "data.validation_fraction": 0.0})
    with pytest.raises(RecipeError, match="validation"):
        tune(no_val)


def test_auto_tune_refuses_a_folder_it_did_not_make_before_any_trial(
    tiny_recipe: Recipe, tmp_path: Path
) -> None:
    from finekit import tune
    from finekit.errors import RunDirError

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    r = tiny_recipe.with_overrides({"training.auto_tune": 2, "output.dir": str(foreign)})
    with pytest.raises(RunDirError, match="not an --auto-tune run"):
        tune(r)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
