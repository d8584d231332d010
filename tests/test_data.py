from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from finekit import Recipe
from finekit.data import read_splits, read_table, sample_per_class
from finekit.errors import DataError
from finekit.tasks import build_task

ROWS = [{"text": f"example {i}", "label": ["a", "b", "c"][i % 3]} for i in range(30)]


def test_reads_csv_tsv_jsonl_parquet_and_hf(tmp_path: Path) -> None:
    df = pd.DataFrame(ROWS)
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    df.to_parquet(tmp_path / "d.parquet")
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(df)}).save_to_disk(
        str(tmp_path / "hf")
    )
    for name in ("d.csv", "d.tsv", "d.jsonl", "d.parquet", "hf"):
        out = read_table(str(tmp_path / name), hf_split="train")
        assert out["text"].tolist() == df["text"].tolist(), name
        assert out["label"].tolist() == df["label"].tolist(), name


def test_a_saved_dataset_dict_fills_every_split(tmp_path: Path) -> None:
    import datasets

    from finekit.errors import RecipeError

    df = pd.DataFrame(ROWS)
    parts = {"train": df[:18], "dev": df[18:24], "test": df[24:]}
    path = str(tmp_path / "hf")
    datasets.DatasetDict(
        {k: datasets.Dataset.from_pandas(v, preserve_index=False) for k, v in parts.items()}
    ).save_to_disk(path)
    # Only the split that is named differently is given; the others keep their names.
    spec = Recipe.from_dict(
        {"model": "m", "data": {"train": path, "hf_splits": {"validation": "dev"}}}
    ).data
    assert spec.hf_splits == {"train": "train", "validation": "dev", "test": "test"}
    splits = read_splits(spec)
    for name, part in (("train", "train"), ("validation", "dev"), ("test", "test")):
        assert getattr(splits, name)["text"].tolist() == parts[part]["text"].tolist(), name
    assert splits.sources == {"train": path, "validation": f"{path}[dev]", "test": f"{path}[test]"}
    # Unnamed and absent (no 'validation' split): held out of train later, as for files.
    plain = read_splits(Recipe.from_dict({"model": "m", "data": {"train": path}}).data)
    assert plain.validation is None and plain.test is not None
    # Named on purpose but absent: an error naming the field and the splits there are.
    with pytest.raises(DataError, match=r"data.hf_splits.validation: .* no split 'valid'.*'dev'"):
        read_splits(
            Recipe.from_dict(
                {"model": "m", "data": {"train": path, "hf_splits": {"validation": "valid"}}}
            ).data
        )
    with pytest.raises(DataError, match=r"splits \['train', 'dev', 'test'\]; split 'training'"):
        read_splits(
            Recipe.from_dict(
                {"model": "m", "data": {"train": path, "hf_splits": {"train": "training"}}}
            ).data
        )
    with pytest.raises(RecipeError, match=r"data.hf_splits.*unknown split\(s\) \['dev'\]"):
        Recipe.from_dict({"model": "m", "data": {"train": path, "hf_splits": {"dev": "dev"}}})
    # A replay corpus and a guard set are read like data.train, train split only: the
    # recipe's renamed validation split is not looked for in them.
    from finekit.evaluate.guards import read_eval_sets
    from finekit.train.replay import read_replay

    extra = str(tmp_path / "extra")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_pandas(df[:9], preserve_index=False)}
    ).save_to_disk(extra)
    r = Recipe.from_dict(
        {
            "model": "m",
            "data": {
                "train": path,
                "hf_splits": {"validation": "dev"},
                "replay": {"path": extra, "ratio": 0.2},
            },
            "evaluation": {"guard": [{"name": "old", "path": extra}]},
        }
    )
    task = build_task(r.task)
    task.prepare(read_splits(r.data), r)
    assert read_replay(r.data, task)["text"].tolist() == df["text"][:9].tolist()
    assert read_eval_sets(r, task)["old"]["text"].tolist() == df["text"][:9].tolist()


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"text,label\n", "no rows"),
        (b"text,label\ncaf\xe9,a\n", "not UTF-8"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, content: bytes | None, pattern: str) -> None:
    p = tmp_path / "bad.csv"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as e:
        read_table(str(p))
    assert "bad.csv" in str(e.value)


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{oops\n')
    with pytest.raises(DataError, match="line 2"):
        read_table(str(p))


def _prepare(tmp_path: Path, train: list[dict], test: list[dict] | None = None, **data):
    pd.DataFrame(train).to_csv(tmp_path / "train.csv", index=False)
    spec = {"train": str(tmp_path / "train.csv"), **data}
    if test is not None:
        pd.DataFrame(test).to_csv(tmp_path / "test.csv", index=False)
        spec["test"] = str(tmp_path / "test.csv")
    r = Recipe.from_dict({"model": "m/m", "data": spec})
    task = build_task(r.task)
    return task, task.prepare(read_splits(r.data), r)


def test_missing_column_lists_existing_columns(tmp_path: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"no column 'category' \(set data.label_column\); "
        r"columns are \['text', 'label'\]",
    ):
        _prepare(tmp_path, ROWS, label_column="category")


def test_empty_cells_are_named(tmp_path: Path) -> None:
    rows = [*ROWS, {"text": "", "label": "a"}]
    with pytest.raises(DataError, match=r"column 'text' is empty in 1 row"):
        _prepare(tmp_path, rows)


def test_unseen_test_label_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"label\(s\) \['zebra'\].*never occur in training"):
        _prepare(tmp_path, ROWS, test=[{"text": "t", "label": "zebra"}])


def test_stratified_validation_split_and_labels(tmp_path: Path) -> None:
    task, prep = _prepare(tmp_path, ROWS, validation_fraction=0.2)
    assert prep.info["labels"] == ["a", "b", "c"]
    val = prep.splits.validation
    assert val is not None and len(val) == 6
    assert sorted(val["label"].value_counts().tolist()) == [2, 2, 2]
    assert not set(val["text"]) & set(prep.splits.train["text"])


def test_int_labels_sort_numerically(tmp_path: Path) -> None:
    rows = [{"text": f"x{i}", "label": i % 11} for i in range(44)]
    _, prep = _prepare(tmp_path, rows, validation_fraction=0.0)
    assert prep.info["labels"][:3] == ["0", "1", "2"] and prep.info["labels"][-1] == "10"


def test_k_per_class_is_reproducible_and_checked(tmp_path: Path) -> None:
    df = pd.DataFrame(ROWS)
    a = sample_per_class(df, "label", 3, seed=7, source="train.csv")
    b = sample_per_class(df, "label", 3, seed=7, source="train.csv")
    c = sample_per_class(df, "label", 3, seed=8, source="train.csv")
    assert a.equals(b) and not a.equals(c)
    assert a["label"].value_counts().tolist() == [3, 3, 3]
    with pytest.raises(
        DataError, match=r"k_per_class=20 but 3 class\(es\) have fewer.*largest possible: 10"
    ):
        sample_per_class(df, "label", 20, seed=7, source="train.csv")
    capped = sample_per_class(df.iloc[:25], "label", 9, seed=7, source="t.csv", cap=True)
    assert sorted(capped["label"].value_counts().tolist()) == [8, 8, 9]  # 'c' has only 8
    with pytest.raises(DataError, match=r"larger than the largest class \(9 examples"):
        sample_per_class(df.iloc[:25], "label", 10, seed=7, source="t.csv", cap=True)


def test_too_few_examples_for_a_stratified_split(tmp_path: Path) -> None:
    rows = [*ROWS, {"text": "lonely", "label": "d"}]
    with pytest.raises(DataError, match=r"classes with fewer than 2 examples: 'd': 1"):
        _prepare(tmp_path, rows, validation_fraction=0.1)


def test_rename_columns_per_file(tmp_path: Path) -> None:
    pd.DataFrame({"label": [0, 1] * 6, "content": [f"t{i}" for i in range(12)]}).to_csv(
        tmp_path / "test.csv", index=False
    )
    rows = [{"sentence": f"s{i}", "label": i % 2} for i in range(20)]
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    r = Recipe.from_dict(
        {
            "model": "m/m",
            "data": {
                "train": str(tmp_path / "train.csv"),
                "test": str(tmp_path / "test.csv"),
                "text_column": "sentence",
                "rename": {"content": "sentence"},
            },
        }
    )
    task = build_task(r.task)
    prep = task.prepare(read_splits(r.data), r)
    assert prep.splits.test is not None and "sentence" in prep.splits.test.columns


def test_eval_and_predict_read_a_dataset_dict_s_test_split(
    tiny_recipe: Recipe, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    import datasets

    from finekit import finetune
    from finekit.serve.predict import load_run

    run = finetune(tiny_recipe.with_overrides({"training.epochs": 1})).run_dir
    loaded = load_run(run)
    test = pd.read_csv(toy_data["test"])
    train = pd.read_csv(toy_data["train"])
    both = str(tmp_path / "both")
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_pandas(train),
            "test": datasets.Dataset.from_pandas(test),
        }
    ).save_to_disk(both)
    assert loaded.read(both)["text"].tolist() == test["text"].tolist()
    only = str(tmp_path / "only")
    datasets.DatasetDict({"held_out": datasets.Dataset.from_pandas(test[:7])}).save_to_disk(only)
    assert loaded.read(only)["text"].tolist() == test["text"][:7].tolist()
    m = loaded.evaluate(loaded.read(both), both, out_dir=tmp_path / "eval", split="both")
    assert m["examples"] == len(test)
