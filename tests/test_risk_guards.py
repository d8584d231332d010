"""Risks of fine-tuning: the base model's slices beside the tuned model's (a gap that
fine-tuning widened is flagged, one the base already had is not), user-given edge-case and
guard sets with before/after and a regression alarm, and choosing the checkpoint by a
retention measure."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import CLASS_WORDS, build_tiny_llama, make_rows

from finekit import Recipe, finetune
from finekit.errors import DataError, RecipeError
from finekit.evaluate.retention import reference_sentences
from finekit.evaluate.slices import compare_slices, slice_gap

FAST = {"epochs": 3, "batch_size": 16, "lr": 2e-3}


def _flipped_phone_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Rows of two channels; "phone" rows carry wrong labels (a defect of the data that
    any model, base or tuned, shows: it cannot be right there)."""
    rows = make_rows(n, seed=seed)
    rng = random.Random(0)
    for i, r in enumerate(rows):
        r["channel"] = "phone" if i % 2 else "web"
        if r["channel"] == "phone":
            r["label"] = rng.choice([x for x in CLASS_WORDS if x != r["label"]])
    return rows


# --------------------------------------------------------------------------- units
def test_gap_comparison_flags_only_a_widened_gap() -> None:
    tuned = {
        "site": {
            "by_value": {
                "a": {"accuracy": 0.95, "examples": 20},
                "b": {"accuracy": 0.55, "examples": 20},
            }
        }
    }
    wide = {"site": {"by_value": {"a": {"accuracy": 0.8}, "b": {"accuracy": 0.7}}}}
    same = {"site": {"by_value": {"a": {"accuracy": 0.9}, "b": {"accuracy": 0.55}}}}
    e = compare_slices(tuned, wide, "accuracy", True, 10, 0.1, "linear_probe")["site"]
    assert e["gap_tuned"] == pytest.approx(0.4) and e["gap_base"] == pytest.approx(0.1)
    assert e["gap_widened"] and e["by_value"]["b"] == {
        "accuracy": 0.55,
        "examples": 20,
        "tuned": 0.55,
        "base": 0.7,
    }
    assert not compare_slices(tuned, same, "accuracy", True, 10, 0.1, "x")["site"]["gap_widened"]
    # Perplexity gaps are log-ratios (nats): 10 vs 20 is the same gap as 100 vs 200.
    assert slice_gap({"a": 10.0, "b": 20.0}, "perplexity", False) == pytest.approx(
        slice_gap({"a": 100.0, "b": 200.0}, "perplexity", False)
    )


# --------------------------------------------------------------------------- classify
def test_classify_base_slices_edge_cases_and_guard(tiny_recipe: Recipe, tmp_path: Path) -> None:
    pd.DataFrame(_flipped_phone_rows(20, seed=5)).to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame(make_rows(5, seed=7)).to_csv(tmp_path / "edge.csv", index=False)
    pd.DataFrame(make_rows(6, seed=8)).to_csv(tmp_path / "guard.csv", index=False)
    res = finetune(
        tiny_recipe,
        data={"test": str(tmp_path / "test.csv")},
        training=FAST,
        evaluation={
            "slices": ["channel"],
            "edge_cases": str(tmp_path / "edge.csv"),
            "guard": [{"name": "core_intents", "path": str(tmp_path / "guard.csv")}],
            "guard_tolerance": 0.5,
        },
    )
    s = res.metrics["test"]["slices"]["channel"]
    # The defect is in the data: the linear probe on the base features has it as well, so
    # the gap is flagged as a gap but not as widened by fine-tuning.
    assert s["base"] == "linear_probe"
    assert s["by_value"]["web"]["base"] > 0.8 and s["by_value"]["phone"]["base"] < 0.2
    assert s["flagged"] and s["gap_base"] > 0.6 and not s["gap_widened"]
    assert not any("widened" in a for a in res.summary["alarms"])
    for name in ("edge_cases", "core_intents"):
        m = res.metrics[name]
        assert m["baseline"] == "linear_probe"
        assert 0 <= m["accuracy_before"] <= 1 and m["accuracy_after"] == m["accuracy"]
        assert (res.run_dir / "eval" / f"{name}.json").is_file()
    html = (res.run_dir / "report.html").read_text()
    assert "core_intents" in html and "base accuracy" in html


def test_bad_evaluation_sets_fail_before_the_run_dir(tiny_recipe: Recipe, tmp_path: Path) -> None:
    out = Path(tiny_recipe.output.dir)
    with pytest.raises(DataError, match=r"evaluation.edge_cases: .*nope.csv does not exist"):
        finetune(tiny_recipe, evaluation={"edge_cases": str(tmp_path / "nope.csv")})
    pd.DataFrame({"words": ["a b"], "label": ["card"]}).to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(
        DataError, match=r"evaluation.guard\[0\] \(old\): .*g.csv: no column 'text'"
    ):
        finetune(
            tiny_recipe, evaluation={"guard": [{"name": "old", "path": str(tmp_path / "g.csv")}]}
        )
    with pytest.raises(RecipeError, match="evaluation.guard name 'test' is taken"):
        finetune(tiny_recipe, evaluation={"guard": [{"name": "test", "path": "x"}]})
    assert not out.exists()


# --------------------------------------------------------------------------- retention metric
def test_checkpoint_chosen_by_retention(tiny_recipe: Recipe) -> None:
    res = finetune(
        tiny_recipe,
        training=FAST,
        evaluation={"metric": "retention_similarity", "patience": 5, "train_eval_samples": 0},
    )
    es, best = res.summary["early_stopping"], res.summary["restored_best"]
    assert es["metric"] == "retention_similarity" and es["mode"] == "max"
    rows = [
        json.loads(x)
        for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()
        if '"validation"' in x
    ]
    top = max(rows, key=lambda r: r["retention_similarity"])
    assert best["step"] == top["step"] and es["best"] == pytest.approx(top["retention_similarity"])
    assert "accuracy" in res.metrics["test"]  # the task's metrics are still reported


def test_unavailable_retention_metric_is_a_named_error(tiny_recipe: Recipe) -> None:
    with pytest.raises(RecipeError, match="evaluation.retention is off"):
        finetune(tiny_recipe, evaluation={"metric": "retention_similarity", "retention": "off"})
    with pytest.raises(RecipeError, match="'general_perplexity': this run measures retention_"):
        finetune(tiny_recipe, evaluation={"metric": "general_perplexity"})
    with pytest.raises(RecipeError, match="model.init is scratch"):
        finetune(tiny_recipe, model={"init": "scratch"}, evaluation={"metric": "retention_cosine"})
    with pytest.raises(RecipeError, match="not a classify metric"):
        finetune(tiny_recipe, evaluation={"metric": "retention_typo"})
    assert not Path(tiny_recipe.output.dir).exists()


# --------------------------------------------------------------------------- causal LM
SUBJECTS = ["the king", "the queen", "a knight"]
VERBS = ["speaks", "weeps", "laughs"]
PLACES = ["in the hall", "at the gate", "by the sea"]


def _domain(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)} ." for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny Llama, given a little "pre-training" on general English first, so
    the base has a skill to lose."""
    words = {w for p in SUBJECTS + VERBS + PLACES for w in p.split()} | {"."}
    general = {w.lower() for s in reference_sentences(None)[0] for w in s.split()}

    def pretrain(model: Any, fast: Any) -> None:
        ids = [i for t in reference_sentences(None)[0] for i in [*fast(t)["input_ids"], 1]]
        blocks = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(30):
            batch = blocks[torch.randperm(len(blocks))[:16]]
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad()

    return build_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama-risk"),
        ["<unk>", "<eos>", *sorted(words | general)],
        before_save=pretrain,
    )


def _lm_recipe(model: Path, tmp: Path, **evaluation: Any) -> dict[str, Any]:
    pd.DataFrame({"text": _domain(200, 1)}).to_csv(tmp / "train.csv", index=False)
    general = reference_sentences(None)[0]
    test = [{"text": t, "kind": "domain"} for t in _domain(20, 2)] + [
        {"text": t, "kind": "general"} for t in general[:20]
    ]
    pd.DataFrame(test).to_csv(tmp / "test.csv", index=False)
    pd.DataFrame({"text": general[20:80]}).to_csv(tmp / "general.csv", index=False)
    return {
        "model": str(model),
        "task": {"name": "causal_lm", "block_size": 16},
        "data": {"train": str(tmp / "train.csv"), "test": str(tmp / "test.csv")},
        "training": {
            "max_steps": 20,
            "batch_size": 8,
            "lr": 5e-3,
            "warmup_ratio": 0.0,
            "precision": "fp32",
        },
        "evaluation": {
            "metric": "perplexity",
            "train_eval_samples": 0,
            "slice_min_examples": 5,
            **evaluation,
        },
        "output": {"dir": str(tmp / "run"), "save_checkpoints": False},
    }


def test_lm_slices_widen_and_guard_regresses(tiny_llama: Path, tmp_path: Path) -> None:
    # Training on the domain text lowers its perplexity and raises that of general
    # English (which the base learnt a little): the domain/general gap widens; a
    # general-English guard set regresses.
    r = _lm_recipe(
        tiny_llama,
        tmp_path,
        slices=["kind"],
        guard=[{"name": "general_english", "path": str(tmp_path / "general.csv")}],
    )
    res = finetune(r)
    s = res.metrics["test"]["slices"]["kind"]
    assert s["base"] == "zero_shot" and s["metric"] == "perplexity"
    bv = s["by_value"]
    assert bv["domain"]["tuned"] < 0.5 * bv["domain"]["base"]
    assert s["gap_tuned"] > s["gap_base"] + 0.1 and s["gap_widened"]
    assert any("slice gap widened on test" in a and "kind" in a for a in res.summary["alarms"])
    g = res.metrics["general_english"]
    assert g["perplexity_after"] > 1.05 * g["perplexity_before"]
    assert any("guard 'general_english' regressed" in a for a in res.summary["alarms"])
    # run.json's token counts are those of the real splits only
    assert set(res.summary["data"]["tokens"]) <= {"train", "validation", "test", "general_english"}


def test_lm_checkpoint_by_general_perplexity(tiny_llama: Path, tmp_path: Path) -> None:
    r = _lm_recipe(tiny_llama, tmp_path, metric="retention_similarity")
    with pytest.raises(RecipeError, match="this run measures general_perplexity"):
        finetune(r)
    r = _lm_recipe(tiny_llama, tmp_path, metric="general_perplexity", patience=10)
    r["data"]["validation_fraction"] = 0.2
    r["evaluation"]["every_steps"] = 10
    res = finetune(r)
    es = res.summary["early_stopping"]
    assert es["metric"] == "general_perplexity" and es["mode"] == "min"
    assert res.summary["restored_best"]["step"] == es["best_step"]
