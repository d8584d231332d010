"""The HTML report and the compare ladder, on the tiny model."""

from __future__ import annotations

import base64
import io
import json
import re
from html import escape as html_escape
from pathlib import Path

import pandas as pd
import pytest

from finekit import Recipe, finetune
from finekit.errors import DataError, RecipeError, RunDirError
from finekit.experiments.compare import compare, train_flops
from finekit.report import write_report
from finekit.tasks.classify.report import leakage


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_leakage_finds_exact_and_near_duplicates() -> None:
    train = ["My card was stolen yesterday", "When do you open on Sunday?", "refund please"]
    other = ["my card was STOLEN yesterday!", "When do you open on sundays", "new text here"]
    lk = leakage(train, other)
    assert lk["exact"] == ["my card was STOLEN yesterday!"]
    assert [n[0] for n in lk["near"]] == ["When do you open on sundays"]


def test_run_report_is_self_contained_and_complete(
    tiny_recipe: Recipe, toy_data, tmp_path: Path
) -> None:
    # Plant a leak: one test row copied from training.
    train = pd.read_csv(toy_data["train"])
    # Its label is flipped, so the model (trained on that text) makes at least one error.
    leaked = train.head(1).copy()
    leaked["label"] = next(x for x in train["label"].unique() if x != leaked["label"].iloc[0])
    test = pd.concat([pd.read_csv(toy_data["test"]), leaked])
    test.to_csv(tmp_path / "test_leaky.csv", index=False)
    r = tiny_recipe.with_overrides({"data.test": str(tmp_path / "test_leaky.csv")})
    result = finetune(r)
    html = (result.run_dir / "report.html").read_text()
    from PIL import Image

    imgs = _images(html)
    assert len(imgs) >= 5  # curves, retention, class balance, lengths, confusion matrix
    for data in imgs:
        w, h = Image.open(io.BytesIO(data)).size
        assert w > 100 and h > 100
    assert f"{result.metrics['test']['accuracy']:.4f}" in html
    for title in (
        "Results",
        "Training curves",
        "Data",
        "Leakage check",
        "Per-class metrics",
        "Confusions",
        "Recipe (resolved)",
        "Retention of general language",
    ):
        assert title in html, title
    # The planted duplicate is counted: test row with 1 exact duplicate.
    assert re.search(
        r"<td class=\"l\">test</td><td class=\"\">46</td><td class=\"\">1</td>", html
    ), "leak not reported"
    assert "http://" not in html and "https://" not in html and "<script" not in html
    # Worst-confused pairs: the most frequent (true, predicted) error of the test split,
    # with its count and the most confident wrong text, as eval/predictions_test.csv has it.
    pred = pd.read_csv(
        result.run_dir / "eval" / "predictions_test.csv", dtype=str, keep_default_na=False
    )
    wrong = pred[pred["label"] != pred["predicted"]]
    assert not wrong.empty  # the flipped leak
    counts = wrong.groupby(["label", "predicted"]).size()
    (true, predicted), n = max(counts.items(), key=lambda kv: kv[1])
    pair = wrong[(wrong["label"] == true) & (wrong["predicted"] == predicted)]
    top = pair.sort_values("confidence", key=lambda c: c.astype(float), ascending=False)
    assert "Worst-confused pairs" in html
    assert f'<td class="l">{true}</td><td class="l">{predicted}</td><td class="">{n}</td>' in html
    assert html_escape(top["text"].iloc[0]) in html
    assert f"{len(wrong)} errors of {len(pred)} examples" in html
    # The validation rows include the training-subset evaluation (the gap).
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(x["split"] == "train_eval" for x in rows)
    assert "loss" in result.metrics["test"]


def test_report_command_rebuilds_and_refuses_other_folders(
    tiny_recipe: Recipe, tmp_path: Path
) -> None:
    result = finetune(tiny_recipe.with_overrides({"training.epochs": 1}))
    (result.run_dir / "report.html").unlink()
    assert write_report(result.run_dir).is_file()
    with pytest.raises(RunDirError, match="neither a finekit run directory"):
        write_report(tmp_path)


def test_small_sizes_get_enough_steps(tiny_recipe: Recipe) -> None:
    from finekit.experiments.compare import cell_epochs

    r = tiny_recipe.with_overrides({"training.epochs": 2, "training.batch_size": 8})
    assert cell_epochs(r, n_train=40, min_steps=50) == 10  # 50 steps * 8 / 40 examples
    assert cell_epochs(r, n_train=4000, min_steps=50) == 2  # never fewer than the recipe


def test_flops_rule() -> None:
    assert train_flops(100, 100, 10, "full") == 6 * 100 * 10
    assert train_flops(100, 5, 10, "linear_probe") == (2 * 100 + 2 * 5) * 10


def test_compare_ladder_resumes_and_checks_inputs(tiny_recipe: Recipe, tmp_path: Path) -> None:
    r = tiny_recipe.with_overrides({"training.epochs": 2, "evaluation.train_eval_samples": 0})
    out = tmp_path / "cmp"
    logs: list[str] = []
    result = compare(r, "scratch,linear-probe", "4,full", 2, out, echo=logs.append, min_steps=0)
    cells = {(c["rung"], c["size"]): c for c in result["cells"]}
    assert set(cells) == {
        (a, b) for a in ("recipe", "scratch", "linear-probe") for b in (4, "full")
    }
    c = cells[("recipe", 4)]
    assert len(c["values"]) == 2 and c["seeds"] == [42, 43] and c["train_examples"] == 12
    assert (
        cells[("linear-probe", "full")]["trainable_parameters"]
        < cells[("recipe", "full")]["trainable_parameters"]
    )
    saved = json.loads((out / "compare.json").read_text())
    assert saved["size_unit"] == "examples per class"
    # Gains: the recipe minus each rung, paired by seed, from the runs' own test metrics.
    metric = saved["metric"]

    def test_metric(rung: str, size: object, seed: int) -> float:
        run = json.loads(
            (out / "runs" / rung / str(size) / f"seed-{seed}" / "run.json").read_text()
        )
        return float(run["metrics"]["test"][metric])

    gain = {(g["against"], g["size"]): g for g in saved["gains"]}
    assert set(gain) == {(a, b) for a in ("scratch", "linear-probe") for b in (4, "full")}
    g = gain[("scratch", "full")]
    diffs = [
        test_metric("recipe", "full", sd) - test_metric("scratch", "full", sd) for sd in (42, 43)
    ]
    assert g["seeds"] == [42, 43] and g["values"] == pytest.approx(diffs)
    assert g["mean"] == pytest.approx(sum(diffs) / 2)
    assert g["recipe_better_in"] == sum(d > 0 for d in diffs)
    assert saved["higher_is_better"] is True
    assert "random init" in saved["rungs"]["scratch"]["note"]
    assert (out / "learning_curve.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "Ladder" in html and "runs/recipe/4/seed-42/report.html" in html
    assert "vs scratch" in html and "paired by seed" in html
    assert "<li>4 examples per class: fine-tuned" in html
    assert "<li>all training data: fine-tuned" in html and "full examples" not in html
    # Rerun: everything is skipped.
    logs.clear()
    compare(r, "scratch,linear-probe", "4,full", 2, out, echo=logs.append, min_steps=0)
    assert logs and all("skipped" in line for line in logs)
    # Another recipe: refused, naming the difference.
    with pytest.raises(RunDirError, match=r"another recipe \(differs in training\.lr\)"):
        compare(r.with_overrides({"training.lr": 0.5}), "scratch", "4", 1, out)
    with pytest.raises(
        DataError,
        match=r"--sizes 500: larger than the largest class.*"
        r"largest possible: 3\d",
    ):
        compare(r, "scratch", "500", 1, tmp_path / "other")
    with pytest.raises(RecipeError, match="unknown rung 'nope'; known: scratch"):
        compare(r, "scratch,nope", "4", 1, tmp_path / "other2")
    # Other options than the finished cells were trained with: refused, not silently mixed.
    with pytest.raises(
        RunDirError, match=r"another recipe for this cell \(differs in .*training\.epochs"
    ):
        compare(r, "scratch,linear-probe", "4,full", 2, out, echo=logs.append, min_steps=500)


def test_scratch_tunes_its_head_rate_on_validation(tiny_recipe: Recipe, tmp_path: Path) -> None:
    """The head's rate of a random body is picked per cell on the validation split (the
    body's or the recipe's head_lr); both runs are kept and the cost of both is counted."""
    r = tiny_recipe.with_overrides(
        {"training.epochs": 2, "training.head_lr": 0.05, "evaluation.train_eval_samples": 0}
    )
    out = tmp_path / "cmp"
    logs: list[str] = []
    result = compare(r, "scratch", "4", 1, out, echo=logs.append, min_steps=0)
    cell = next(c for c in result["cells"] if c["rung"] == "scratch")
    tuning = cell["tuning"]
    (tries,) = tuning["tries"]
    assert list(tries) == ["head-at-body-lr", "head_lr-0.05"]
    seed_dir = out / "runs" / "scratch" / "4" / "seed-42"
    runs = {k: json.loads((seed_dir / k / "run.json").read_text()) for k in tries}
    heads = {k: Recipe.from_yaml(seed_dir / k / "recipe.yaml").training.head_lr for k in tries}
    assert heads == {"head-at-body-lr": None, "head_lr-0.05": 0.05}
    metric = result["metric"]
    val = {k: runs[k]["metrics"]["validation"][metric] for k in tries}
    assert {k: v["validation"] for k, v in tries.items()} == val
    best = max(val, key=lambda k: val[k])  # the first on a tie, like the compare
    assert tuning["chosen"] == [best] and cell["runs"] == [f"runs/scratch/4/seed-42/{best}"]
    assert cell["values"] == [runs[best]["metrics"]["test"][metric]]  # the chosen run's test
    assert tuning["train_seconds_all_tries"] == pytest.approx(
        sum(x["train"]["seconds"] for x in runs.values())
    )
    assert tuning["train_seconds_all_tries"] > cell["train_seconds"]
    assert "validation split" in result["rungs"]["scratch"]["note"]
    html = (out / "report.html").read_text()
    assert f"{best} ×1; all tries" in html and f"runs/scratch/4/seed-42/{best}/report.html" in html
    # the recipe itself is never tuned; a rerun trains nothing
    assert "tuning" not in next(c for c in result["cells"] if c["rung"] == "recipe")
    logs.clear()
    compare(r, "scratch", "4", 1, out, echo=logs.append, min_steps=0)
    assert len(logs) == 3 and all("skipped" in line for line in logs)


def test_pick_on_validation_follows_the_metric_direction(tiny_recipe: Recipe) -> None:
    from finekit.experiments.compare import pick_on_validation

    def t(label: str, v: float | None) -> tuple[str, Path, dict]:
        return label, Path(label), {"metrics": {"validation": {"accuracy": v, "loss": v}}}

    tries = [t("a", 0.5), t("b", 0.7), t("c", None)]
    assert pick_on_validation(tries, tiny_recipe)[0] == "b"
    lower = tiny_recipe.with_overrides({"evaluation.metric": "loss"})
    assert pick_on_validation(tries, lower)[0] == "a"
    assert pick_on_validation([t("a", 0.5), t("b", 0.5)], tiny_recipe)[0] == "a"


def test_sizes_and_rungs_are_deduplicated(tiny_recipe: Recipe) -> None:
    from finekit.experiments.compare import parse_rungs, parse_sizes

    assert parse_sizes("8, 8,full,32,full") == [8, "full", 32]
    assert parse_rungs("scratch,lora,scratch,full", tiny_recipe) == ["recipe", "scratch", "lora"]


def test_missing_values_are_counted_not_averaged() -> None:
    from finekit.experiments.compare import gains, spread
    from finekit.report.compare import _fmt, _x

    s = spread([0.8, None, 0.6])
    assert s["mean"] == pytest.approx(0.7) and s["missing"] == 1 and len(s["values"]) == 3
    assert spread([None])["mean"] is None and _fmt({**spread([None])}) == "—"
    assert "1 run(s) without a value" in _fmt(s)

    def run(v: float | None) -> dict:
        return {"metrics": {"test": {"roc_auc": v}}}

    runs = [
        {"rung": "recipe", "size": 4, "seed": 1, "run": run(0.9)},
        {"rung": "scratch", "size": 4, "seed": 1, "run": run(0.7)},
        {"rung": "recipe", "size": 4, "seed": 2, "run": run(None)},
        {"rung": "scratch", "size": 4, "seed": 2, "run": run(0.5)},
    ]
    (g,) = gains(runs, ["recipe", "scratch"], [4], "test", "roc_auc", higher=True)
    assert g["seeds"] == [1] and g["values"] == [pytest.approx(0.2)]
    (g,) = gains(runs, ["recipe", "scratch"], [4], "test", "roc_auc", higher=False)
    assert g["values"] == [pytest.approx(-0.2)]  # lower-is-better metrics flip the sign
    # The curve's x is what a cell really trained on: 128 per class capped by small
    # classes sits left of 'full', not at 128.
    data = {"num_classes": 4}
    capped = _x({"size": 128, "train_examples": 400}, data)
    full = _x({"size": "full", "train_examples": 420}, data)
    assert capped == 100 and full == 105 and capped < full


def test_training_table_reads_as_counts_and_measurements() -> None:
    from finekit.report.run import _train_table

    html = _train_table(
        {
            "seconds": 119.19,
            "samples_per_second": 96.9,
            "tokens_per_second": 1530.34,
            "epochs": 15.0,
            "samples_seen": 11550,
            "precision": "bf16",
            "resumed_from": None,
        }
    )
    cells = dict(re.findall(r'<td class="l">([^<]+)</td><td class="">([^<]*)</td>', html))
    assert cells == {
        "seconds": "119.2",
        "samples_per_second": "96.9",
        "tokens_per_second": "1,530.3",
        "epochs": "15",
        "samples_seen": "11,550",
        "precision": "bf16",
        "resumed_from": "—",
    }
    assert "0.25" in _train_table({"epochs": 0.25})


def test_sizes_and_text_cells_read_as_a_person_expects() -> None:
    from finekit.report.html import table
    from finekit.report.run import _bytes

    assert [_bytes(n) for n in (812, 4096, 999_950, 91_700_000, 2 * 10**12)] == [
        "812 B",
        "4.1 kB",
        "1.0 MB",
        "91.7 MB",
        "2.0 TB",
    ]
    # Text after a number column (the confusions' examples) aligns left; numbers right.
    html = table(["true", "errors", "examples"], [["a", 3, "why?"]], text_columns=[2])
    assert re.findall(r'<td class="(l?)">', html) == ["l", "", "l"]


def test_curve_ticks_name_the_sizes_and_never_overlap() -> None:
    """Banking77's 128 per class trains on 109.6 per class, all data on 116.9: on a log
    axis the two ticks nearly coincide. Each is named by the size asked for, and the
    labels are laid out so that none prints over another."""
    import matplotlib.pyplot as plt

    from finekit.report.compare import _learning_curve_fig

    per_class = {8: 8.0, 32: 32.0, 128: 109.6, "full": 116.9}
    cells = [
        {"rung": r, "size": s, "mean": m, "std": 0.01, "train_examples": 77 * x}
        for r, base in (("recipe", 0.8), ("scratch", 0.6))
        for (s, x), m in zip(
            per_class.items(), (base, base + 0.05, base + 0.1, base + 0.1), strict=True
        )
    ]
    data = {
        "rungs": {"recipe": {"method": "full"}, "scratch": {"method": "full"}},
        "cells": cells,
        "num_classes": 77,
        "metric": "accuracy",
        "split": "test",
        "size_unit": "examples per class",
    }
    fig = _learning_curve_fig(data)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = ax.get_xticklabels()
    assert [lab.get_text() for lab in labels] == ["8", "32", "128", "all"]
    assert list(ax.get_xticks()) == pytest.approx([8.0, 32.0, 109.6, 116.9])
    boxes = [lab.get_window_extent(renderer) for lab in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    # Labels that fit stay on the first row: only the crowded one moved down.
    tops = [round(b.y1) for b in boxes]
    assert tops[0] == tops[1] == tops[2] > tops[3]
    plt.close(fig)


def test_rungs_are_declared_and_not_duplicated(tiny_recipe: Recipe, tmp_path: Path) -> None:
    from finekit.experiments.compare import parse_rungs, rung_recipe

    assert parse_rungs("scratch,full,lora", tiny_recipe) == ["recipe", "scratch", "lora"]
    scratch = rung_recipe(tiny_recipe, "scratch", 4, 1, tmp_path / "a", classes=True)
    same = rung_recipe(tiny_recipe, "scratch-same", 4, 1, tmp_path / "b", classes=True)
    assert scratch.model.init == same.model.init == "scratch"
    assert (
        scratch.training.lr >= 3e-4 and scratch.training.epochs == 2 * tiny_recipe.training.epochs
    )
    assert scratch.training.head_lr is None  # the body's rate unless tuned (below)
    assert same.training.lr == tiny_recipe.training.lr
    assert same.training.epochs == tiny_recipe.training.epochs
    probe = rung_recipe(tiny_recipe, "linear-probe", "full", 1, tmp_path / "c", classes=True)
    assert probe.method.name == "linear_probe" and probe.data.k_per_class is None
    # a linear head on frozen features takes a high rate (at the recipe's head_lr it under-fit)
    assert probe.training.lr >= 0.1 and probe.training.head_lr is None
    lora = rung_recipe(tiny_recipe, "lora", 4, 1, tmp_path / "d", classes=True)
    assert lora.method.name == "lora" and lora.training.head_lr >= 0.1  # the head, like the probe
    assert lora.training.lr == max(5 * tiny_recipe.training.lr, 5e-4)
