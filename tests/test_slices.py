"""Per-slice metrics: a planted defect on one slice is measured and raises the alarm; a
missing slice column is a named error before anything is written."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
from conftest import CLASS_WORDS, make_rows

from finekit import Recipe, finetune
from finekit.errors import DataError


def test_planted_slice_gap_is_measured_and_flagged(tiny_recipe: Recipe, tmp_path: Path) -> None:
    # Test rows from channel "phone" carry wrong labels (a defect of that slice's data);
    # "web" rows are clean. The model cannot be right on "phone": a gap of ~0.6+.
    rows = make_rows(20, seed=5)
    rng = random.Random(0)
    labels = list(CLASS_WORDS)
    for i, r in enumerate(rows):
        r["channel"] = "phone" if i % 2 else "web"
        if r["channel"] == "phone":
            r["label"] = rng.choice([x for x in labels if x != r["label"]])
    pd.DataFrame(rows).to_csv(tmp_path / "test.csv", index=False)
    res = finetune(
        tiny_recipe,
        data={"test": str(tmp_path / "test.csv")},
        evaluation={"slices": ["channel"]},
    )
    s = res.metrics["test"]["slices"]["channel"]
    assert s["by_value"]["web"]["accuracy"] > 0.8
    assert s["by_value"]["phone"]["accuracy"] < 0.2
    assert s["flagged"] and s["worst"] == "phone" and s["gap"] > 0.6
    assert any("slice gap on test" in a and "channel=phone" in a for a in res.summary["alarms"])
    assert (
        "slices"
        in __import__("json").loads((res.run_dir / "eval" / "test.json").read_text())["metrics"]
    )
    assert "Slices" in (res.run_dir / "report.html").read_text()


def test_missing_slice_column_fails_before_writing(tiny_recipe: Recipe) -> None:
    out = Path(tiny_recipe.output.dir)
    with pytest.raises(DataError, match=r"evaluation.slices names column\(s\) \['site'\]"):
        finetune(tiny_recipe, evaluation={"slices": ["site"]})
    assert not out.exists()
