"""Retention of the base model's general skill: measured per evaluation and before/after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finekit import Recipe, finetune
from finekit.errors import DataError
from finekit.evaluate.retention import reference_sentences


def test_shipped_reference_is_general_english() -> None:
    lines, source = reference_sentences()
    assert len(lines) == 300 and "CC0" in source
    text = " ".join(lines).lower()
    for word in ("refund", "password", "subscription"):
        assert word not in text


def test_retention_is_reported_and_l2sp_keeps_more(tiny_recipe: Recipe, tmp_path: Path) -> None:
    r = tiny_recipe.with_overrides({"training.epochs": 3, "training.lr": 3e-3})
    plain = finetune(r.with_overrides({"output.dir": str(tmp_path / "plain")}))
    kept = finetune(r.with_overrides({"output.dir": str(tmp_path / "l2sp"), "training.l2sp": 50.0}))
    ret = plain.summary["retention"]
    assert ret["before"]["retention_similarity"] == 1.0 and ret["sentences"] == 300
    assert len(ret["per_evaluation"]) == 3
    rows = [json.loads(x) for x in (plain.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("retention_similarity" in x for x in rows if x["split"] == "validation")
    a = plain.summary["retention"]["after"]["retention_similarity"]
    b = kept.summary["retention"]["after"]["retention_similarity"]
    assert -1 <= a < b <= 1, (a, b)


def test_retention_off_for_scratch_and_bad_reference(tiny_recipe: Recipe, tmp_path: Path) -> None:
    scratch = finetune(tiny_recipe.with_overrides({"model.init": "scratch", "training.epochs": 1}))
    assert scratch.summary["retention"] is None
    out = tmp_path / "never"
    with pytest.raises(DataError, match="retention_reference .* does not exist"):
        finetune(
            tiny_recipe.with_overrides(
                {
                    "evaluation.retention_reference": str(tmp_path / "nope.txt"),
                    "output.dir": str(out),
                }
            )
        )
    assert not out.exists()
