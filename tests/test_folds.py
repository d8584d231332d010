"""K-fold cross-validation: `finekit train RECIPE --folds K` / `finetune_folds` — each run
validates on its own fold of data.train, the folds partition it (stratified by class,
contiguous for LM text), folds.json holds mean ± std over the real per-fold values."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pandas as pd
import pytest

from finekit import Recipe, finetune_folds
from finekit.data.splits import Splits, fold_holdout, read_splits
from finekit.errors import DataError, RecipeError, RunDirError
from finekit.experiments.seeds import FOLDS_JSON
from finekit.recipe import FoldSpec
from finekit.tasks import build_task
from finekit.tasks.lm.causal import fold_text


def _fold_splits(r: Recipe, k: int) -> list[Splits]:
    out = []
    for i in range(k):
        ri = r.with_overrides({"data.folds": {"k": k, "index": i}})
        out.append(build_task(ri.task).prepare(read_splits(ri.data), ri).splits)
    return out


def test_classify_folds_partition_train_stratified(tiny_recipe: Recipe, toy_data: dict) -> None:
    k = 4
    folds = _fold_splits(tiny_recipe, k)
    everything = pd.read_csv(toy_data["train"])
    key = lambda df: sorted(zip(df["text"], df["label"], strict=True))  # noqa: E731
    vals = [f.validation for f in folds]
    # The k validation folds are disjoint and together are the whole training file.
    assert sorted(sum((key(v) for v in vals), [])) == key(everything)
    for f in folds:
        # Each run trains on the rest: nothing of its validation fold, everything else.
        assert sorted(key(f.train) + key(f.validation)) == key(everything)
        # Stratified: each class has len/k of its examples in each fold (40 per class / 4).
        assert f.validation["label"].value_counts().tolist() == [10, 10, 10]
    # The same seed gives the same partition in every fold's run; another seed another one.
    again = _fold_splits(tiny_recipe, k)[2].validation
    assert key(again) == key(vals[2])
    other = _fold_splits(tiny_recipe.with_overrides({"training.seed": 7}), k)[2].validation
    assert key(other) != key(vals[2])


def test_fold_errors_name_the_problem(tiny_recipe: Recipe, toy_data: dict) -> None:
    df = pd.DataFrame({"text": list("abcdefg"), "label": ["x"] * 5 + ["y"] * 2})
    with pytest.raises(DataError, match=r"src\.csv: 3-fold .* 1 class\(es\) have fewer: 'y': 2"):
        fold_holdout(df, FoldSpec(k=3, index=0), 0, "label", "src.csv")
    with pytest.raises(DataError, match="7 rows are too few for data.folds.k=8"):
        fold_holdout(df, FoldSpec(k=8, index=0), 0, None, "src.csv")
    with pytest.raises(ValueError, match=r"data.folds.index=3 must be below data.folds.k=3"):
        tiny_recipe.with_overrides({"data.folds": {"k": 3, "index": 3}})
    # A validation file beside the folds would be silently ignored: refused, named.
    r = tiny_recipe.with_overrides(
        {"data.validation": str(toy_data["test"]), "data.folds": {"k": 3, "index": 0}}
    )
    with pytest.raises(DataError, match=r"data.folds cross-validates .* data.validation is given"):
        read_splits(r.data)
    with pytest.raises(RecipeError, match="--folds must be a whole number >= 2"):
        finetune_folds(tiny_recipe, folds=1)
    with pytest.raises(RecipeError, match=r"names data.validation .*: drop it"):
        finetune_folds(tiny_recipe.with_overrides({"data.validation": str(toy_data["test"])}))


@pytest.mark.parametrize("seed", range(6))
def test_lm_text_folds_tile_the_corpus(seed: int) -> None:
    """Random corpora, k = 2..7: the k validation parts, in order, are the corpus exactly,
    and each run trains on exactly the text before and after its part."""
    rng = random.Random(seed)
    words = ["the", "ship", "sails", "north", "at", "dawn", "and", "returns"]
    docs = []
    for _ in range(rng.randint(2, 6)):
        n_lines = rng.randint(1, 12)
        lines = [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(n_lines)]
        docs.append("\n".join(lines) + rng.choice(["\n", ""]))
    df = pd.DataFrame({"text": docs})
    whole = "".join(docs)
    for k in range(2, 8):
        done = ""
        for i in range(k):
            train, val = fold_text(df, k, i, "text", "corpus")
            part = "".join(val["text"])
            assert part and whole[len(done) :].startswith(part)
            assert "".join(train["text"]) == done + whole[len(done) + len(part) :]
            done += part
        assert done == whole, k


def test_lm_text_folds_cut_at_line_breaks_into_even_parts() -> None:
    lines = [f"line {i} of the corpus" for i in range(60)]
    df = pd.DataFrame({"text": ["\n".join(lines[:25]) + "\n", "\n".join(lines[25:]) + "\n"]})
    whole = "".join(df["text"])
    parts = [fold_text(df, 3, i, "text", "corpus")[1] for i in range(3)]
    for p in parts:
        text = "".join(p["text"])
        assert text.startswith("line ") and text.endswith("\n")  # cut at line breaks
        assert abs(len(text) - len(whole) / 3) < 30  # about a third each
    assert "".join("".join(p["text"]) for p in parts) == whole
    with pytest.raises(DataError, match=r"too small to cut into data.folds.k=3 parts; lower"):
        fold_text(pd.DataFrame({"text": ["one line"]}), 3, 1, "text", "tiny.txt")


def test_folds_run_and_aggregate(tiny_recipe: Recipe, tmp_path: Path) -> None:
    r = tiny_recipe.with_overrides({"training.epochs": 2})
    out = tmp_path / "folds"
    logs: list[str] = []
    result = finetune_folds(r, folds=3, output=out, echo=logs.append)
    assert result["runs"] == ["fold-0", "fold-1", "fold-2"] and result["folds"] == 3
    runs = [json.loads((out / f"fold-{i}" / "run.json").read_text()) for i in range(3)]
    assert all(x["status"] == "completed" for x in runs)
    stored = [Recipe.from_yaml(out / f"fold-{i}" / "recipe.yaml").data.folds for i in range(3)]
    assert [(f.k, f.index) for f in stored] == [(3, 0), (3, 1), (3, 2)]
    saved = json.loads((out / FOLDS_JSON).read_text())
    for split in ("validation", "test"):
        values = [x["metrics"][split]["loss"] for x in runs]
        cell = saved["metrics"][split]["loss"]
        assert cell["values"] == values
        assert cell["mean"] == pytest.approx(statistics.fmean(values))
        assert cell["std"] == pytest.approx(statistics.stdev(values))
    # Different validation folds: the validation losses really differ.
    assert saved["metrics"]["validation"]["loss"]["std"] > 0
    assert "3-fold cross-validation" in logs[-1] and "mean ± std" in logs[-1]
    # Rerun skips the finished folds; another recipe in the folder is refused.
    logs.clear()
    finetune_folds(r, folds=3, output=out, echo=logs.append)
    assert sum("skipped" in line for line in logs) == 3
    with pytest.raises(RunDirError, match=r"another recipe .*training\.lr"):
        finetune_folds(r.with_overrides({"training.lr": 0.5}), folds=3, output=out)
    # Another number of folds would reuse fold-0..2 of the 3-fold partition: refused.
    with pytest.raises(RunDirError, match=r"another recipe .*data\.folds"):
        finetune_folds(r, folds=2, output=out)


def test_cli_folds(tiny_recipe: Recipe, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from finekit.cli import main

    recipe = tmp_path / "r.yaml"
    tiny_recipe.with_overrides({"training.epochs": 1, "output.dir": None}).to_yaml(recipe)
    out = tmp_path / "cli-folds"
    assert main(["train", str(recipe), "--folds", "2", "--seeds", "2", "-o", str(out)]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main(["train", str(recipe), "--folds", "2", "--output", str(out)]) == 0
    assert "2-fold cross-validation" in capsys.readouterr().out
    assert (out / "fold-0" / "model").is_dir() and (out / "fold-1" / "model").is_dir()
    assert (out / FOLDS_JSON).is_file()


def test_chat_folds_hold_out_whole_conversations(tmp_path: Path) -> None:
    from test_chat import _taskmaster

    from finekit.data.readers import read_table
    from finekit.tasks.chat.task import ChatTask

    path = tmp_path / "dialogs.json"
    _taskmaster(path)  # 10 conversations
    df = read_table(str(path))
    seen: list[str] = []
    for i in range(5):
        r = Recipe.from_dict(
            {
                "model": "x",
                "task": "chat",
                "data": {"train": str(path), "folds": {"k": 5, "index": i}},
                "evaluation": {"metric": "loss"},
            }
        )
        s = ChatTask(r.task).prepare(Splits(train=df, sources={"train": str(path)}), r).splits  # type: ignore[arg-type]
        assert len(s.validation) == 2 and len(s.train) == 8
        assert set(s.train["conversation"]).isdisjoint(s.validation["conversation"])
        seen += list(s.validation["conversation"])
        everyone = sorted([*s.train["conversation"], *s.validation["conversation"]])
    assert sorted(seen) == everyone and len(set(seen)) == 10  # each validated once


def test_folds_leave_out_a_validation_split_shipped_in_the_train_file(tmp_path: Path) -> None:
    """MedMNIST-style .npz with val_* arrays: under folds validation comes from the folds
    of the training arrays; the shipped test split is kept."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("val", 8), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 8, 8)).astype(np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    np.savez(tmp_path / "x.npz", **arrays)
    r = Recipe.from_dict({"model": "x", "data": {"train": str(tmp_path / "x.npz")}})
    assert read_splits(r.data).validation is not None  # shipped split, used without folds
    s = read_splits(r.with_overrides({"data.folds": {"k": 3, "index": 1}}).data)
    assert s.validation is None and len(s.train) == 30 and len(s.test) == 8
