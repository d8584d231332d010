"""Sentence-pair classification (`data.text_pair_column`: NLI, question/passage) end to end:
the model reads the pair, lengths and truncation count it, the report shows and checks
examples as pairs, and prediction asks for both columns."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import FILLER, make_rows

from finekit import Recipe, finetune
from finekit.data.splits import read_splits
from finekit.errors import DataError, RecipeError
from finekit.serve.predict import load_run
from finekit.tasks.classify import ClassifyConfig, ClassifyTask
from finekit.tasks.classify.report import PAIR_JOIN, _confusions


def _pair_rows(n_per_class: int, seed: int) -> pd.DataFrame:
    """The label is in the pair alone; the first text is filler that says nothing."""
    rng = random.Random(seed + 100)
    rows = make_rows(n_per_class, seed)
    return pd.DataFrame(
        {
            "premise": [" ".join(rng.sample(FILLER, rng.randint(1, 3))) for _ in rows],
            "hypothesis": [r["text"] for r in rows],
            "label": [r["label"] for r in rows],
        }
    )


@pytest.fixture()
def pair_recipe(tiny_recipe: Recipe, tmp_path: Path) -> Recipe:
    train, test = _pair_rows(40, seed=1), _pair_rows(15, seed=2)
    # One test example repeats a training pair exactly (a leak); the others share at most
    # a premise with training, which for pairs is no leak.
    test.loc[0] = train.loc[0]
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    return tiny_recipe.with_overrides(
        {
            "data": {
                "train": str(tmp_path / "train.csv"),
                "test": str(tmp_path / "test.csv"),
                "text_column": "premise",
                "text_pair_column": "hypothesis",
            },
            "output.dir": str(tmp_path / "pair-run"),
        }
    )


def test_the_model_reads_the_pair(pair_recipe: Recipe, tmp_path: Path) -> None:
    paired = finetune(pair_recipe)
    alone = finetune(
        pair_recipe.with_overrides(
            {"data.text_pair_column": None, "output.dir": str(tmp_path / "alone")}
        )
    )
    # The label is only in the pair: with it the model learns, without it it guesses.
    assert paired.metrics["test"]["accuracy"] >= 0.9
    assert alone.metrics["test"]["accuracy"] <= 0.6

    run = paired.run_dir
    test = pd.read_csv(pair_recipe.data.test)
    preds = pd.read_csv(run / "eval" / "predictions_test.csv", keep_default_na=False)
    assert preds["text_pair"].tolist() == test["hypothesis"].tolist()

    html = (run / "report.html").read_text(encoding="utf-8")
    # Leakage is judged on whole examples: exactly the one repeated pair, although most
    # test premises (one to three filler words) also occur in training.
    train = pd.read_csv(pair_recipe.data.train)
    assert test["premise"].isin(set(train["premise"])).sum() > 10
    leaks = html[html.index("Leakage check") :]
    row = re.search(r'<td class="l">test</td><td class="">(\d+)</td><td class="">(\d+)', leaks)
    assert row and row.groups() == (str(len(test)), "1")
    assert (test.loc[0, "premise"] + PAIR_JOIN + test.loc[0, "hypothesis"]) in html

    loaded = load_run(run)
    out = loaded.predict(test.drop(columns=["label"]))
    hits = sum(p["label"] == y for p, y in zip(out, test["label"], strict=True))
    assert hits / len(test) == pytest.approx(paired.metrics["test"]["accuracy"])
    with pytest.raises(DataError, match="'premise' and 'hypothesis'"):
        loaded.predict(["please help"])
    with pytest.raises(DataError, match=r"no column 'hypothesis' \(set data.text_pair_column\)"):
        loaded.predict(test[["premise"]])


def test_lengths_and_truncation_count_the_pair(pair_recipe: Recipe) -> None:
    from transformers import AutoTokenizer

    recipe = pair_recipe.with_overrides({"training.max_length": 9})
    tok = AutoTokenizer.from_pretrained(recipe.model.path)
    task = ClassifyTask(ClassifyConfig())
    prepared = task.prepare(read_splits(recipe.data), recipe)
    df = prepared.splits.train
    enc = task.encode(df, tok, "train")
    whole = [
        len(tok(a, b)["input_ids"]) for a, b in zip(df["premise"], df["hypothesis"], strict=True)
    ]
    over = [n for n in whole if n > 9]
    alone = [len(tok(a)["input_ids"]) for a in df["premise"]]
    assert max(alone) <= 9 < max(whole)  # only the pair pushes examples over the limit
    assert task.truncation["train"]["examples"] == len(over) > 0
    assert task.truncation["train"]["tokens_lost"] == sum(n - 9 for n in over)
    assert max(len(enc[i]["input_ids"]) for i in range(len(enc))) == 9


def test_confused_examples_are_quoted_as_pairs(tmp_path: Path) -> None:
    (tmp_path / "eval").mkdir()
    pd.DataFrame(
        {
            "text": ["a man sleeps", "a dog runs"],
            "text_pair": ["a person is awake", "an animal moves"],
            "label": ["contradiction", "entailment"],
            "predicted": ["entailment", "entailment"],
            "confidence": [0.9, 0.8],
        }
    ).to_csv(tmp_path / "eval" / "predictions_test.csv", index=False)
    from finekit.report.html import render

    html = render(_confusions(tmp_path, "test"), tmp_path)
    assert "a man sleeps" + PAIR_JOIN + "a person is awake" in html
    assert "a dog runs" not in html  # predicted right: not among the confusions


def test_a_pair_column_is_refused_where_nothing_reads_it(tiny_recipe: Recipe) -> None:
    data = tiny_recipe.to_dict()
    data["task"] = {"name": "causal_lm"}
    data["data"]["text_pair_column"] = "second"
    with pytest.raises(RecipeError, match=r"data.text_pair_column.*'causal_lm'.*'second'"):
        Recipe.from_dict(data)
