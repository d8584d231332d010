"""The CLI: flags and --set reach the recipe; bad input is one line and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from finekit.cli import main


def test_recipe_prints_resolved_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "--set", "training.lr=3e-5"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["training"]["lr"] == pytest.approx(3e-5)
    assert out["training"]["precision"] == "auto" and out["method"]["name"] == "full"


def test_recipe_validates_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("model: m/m\ndata: {train: t.csv}\ntraining: {epocs: 3}\n")
    assert main(["recipe", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown field 'training.epocs'" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


def test_bad_inputs_exit_2_with_one_line(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (
            ["train", "--model", str(tiny_model_dir), "--train", str(tmp_path / "nope.csv")],
            "does not exist",
        ),
        (["train", "--model", str(tmp_path), "--train", str(tmp_path / "t.csv")], "is not a model"),
        (["train"], "give a recipe file"),
        (["predict", str(tmp_path), "hello"], "not a finekit run directory"),
    ]
    pd.DataFrame({"text": ["a b", "c d"] * 5, "label": ["x", "y"] * 5}).to_csv(
        tmp_path / "t.csv", index=False
    )
    for argv, pattern in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert pattern in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_train_eval_predict_round_trip(
    tmp_path: Path, tiny_model_dir: Path, toy_data, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--train",
        str(toy_data["train"]),
        "--test",
        str(toy_data["test"]),
        "--epochs",
        "6",
        "--lr",
        "1e-3",
        "--batch-size",
        "8",
        "--set",
        "training.precision=fp32",
        "--output",
        str(run),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"run directory : {run}" in out and "test" in out
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["training"]["lr"] == pytest.approx(1e-3) and recipe["training"]["epochs"] == 6

    # One name for the input file across eval, predict and generate (--data still works).
    for flag in ("--input", "-i", "--data"):
        assert main(["eval", str(run), flag, str(toy_data["test"])]) == 0
        out = capsys.readouterr().out
        assert '"accuracy"' in out and (run / "eval" / "test.json").is_file()

    assert main(["predict", str(run), "my card was stolen", "when do you open"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(
        line.split("\t")[0] in {"card", "refund", "hours"} for line in lines
    )

    out_file = tmp_path / "preds.jsonl"
    assert (
        main(["predict", str(run), "--input", str(toy_data["test"]), "--output", str(out_file)])
        == 0
    )
    preds = pd.read_json(out_file, lines=True)
    acc = (preds["predicted_label"] == preds["label"]).mean()
    import json

    run_json = json.loads((run / "run.json").read_text())
    assert acc == run_json["metrics"]["test"]["accuracy"]  # predict reproduces the run exactly


def test_resume_flag_uses_the_runs_own_recipe(
    tmp_path: Path, tiny_model_dir: Path, toy_data, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    base = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--train",
        str(toy_data["train"]),
        "--epochs",
        "1",
        "--set",
        "training.precision=fp32",
        "--output",
        str(run),
    ]
    assert main(base) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0  # already finished: nothing to redo
    assert "run directory" in capsys.readouterr().out
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2


def test_pretrain_trains_the_same_architecture_from_random_init(
    tmp_path: Path, tiny_recipe, tiny_model_dir: Path
) -> None:
    import json

    from safetensors.torch import load_file

    recipe = tmp_path / "r.yaml"
    tiny_recipe.with_overrides({"training.epochs": 1}).to_yaml(recipe)
    out = tmp_path / "scratch"
    assert main(["pretrain", str(recipe), "--set", "training.max_steps=2", "-o", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["init"] == "scratch" and run["status"] == "completed"
    assert yaml.safe_load((out / "recipe.yaml").read_text())["model"]["init"] == "scratch"
    # Not the pre-trained weights: two Adam steps of 1e-3 move a weight by <= 2e-3; a fresh
    # random init (std 0.02) differs from the base by ~0.02 on average.
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    tuned = load_file(str(out / "model" / "model.safetensors"))
    key = next(k for k in base if k.endswith("word_embeddings.weight"))
    other = tuned["bert." + key if "bert." + key in tuned else key]
    assert (base[key] - other).abs().mean() > 0.01


def test_compare_and_report_from_the_command_line(
    tmp_path: Path, tiny_recipe, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    recipe = tmp_path / "r.yaml"
    tiny_recipe.with_overrides({"training.epochs": 1}).to_yaml(recipe)
    out = tmp_path / "cmp"
    argv = ["compare", str(recipe), "--against", "linear-probe", "--sizes", "4", "--seeds", "2"]
    argv += ["--min-steps", "0", "--output", str(out), "--set", "training.lr=2e-3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "compare.json").read_text())
    assert saved["seeds"] == [42, 43] and saved["sizes"] == [4]
    # --set reached every run of the ladder.
    run = out / "runs" / "recipe" / "4" / "seed-43" / "recipe.yaml"
    assert yaml.safe_load(run.read_text())["training"]["lr"] == pytest.approx(2e-3)
    # The printed table is compare.json's numbers.
    cell = next(c for c in saved["cells"] if c["rung"] == "linear-probe")
    assert f"{cell['mean']:.4f} ± {cell['std']:.4f}" in printed
    (gain,) = saved["gains"]
    assert f"recipe vs linear-probe  size=4     {gain['mean']:+.4f}" in printed
    assert f"compare directory: {out}" in printed
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    assert "Learning curves" in (out / "report.html").read_text()
    # A bad rung: one line, exit 2, nothing written.
    assert main(["compare", str(recipe), "--against", "sratch", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown rung 'sratch'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from finekit import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"finekit {__version__}"


def test_every_option_has_help_and_the_lists_come_from_the_registries() -> None:
    import typer.main

    from finekit.cli import app
    from finekit.core.contracts import METHODS, TASKS

    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    assert {"train", "check", "eval", "predict", "generate", "compare"} <= set(commands)
    for name, cmd in commands.items():
        assert cmd.help, name
        for p in cmd.params:
            if p.param_type_name == "option":
                assert p.help, f"finekit {name} {p.opts[0]} has no help text"
    train = commands["train"]
    helps = {p.name: p.help for p in train.params if p.param_type_name == "option"}
    # Every plug-in registered when the CLI was imported (finekit's own at least).
    builtin_tasks = ("classify", "causal_lm", "masked_lm", "chat", "regress")
    assert all(t in helps["task"] for t in builtin_tasks) and set(builtin_tasks) <= set(TASKS)
    builtin_methods = ("full", "freeze", "gradual_unfreeze", "bitfit", "linear_probe", "lora")
    builtin_methods += ("dora", "ia3", "prompt_tuning")
    assert all(m in helps["method"] for m in builtin_methods)
    assert set(builtin_methods) <= set(METHODS)
    # The same input-file option on eval, predict and generate.
    for name in ("eval", "predict", "generate"):
        opts = [o for p in commands[name].params for o in p.opts]
        assert "--input" in opts and "-i" in opts, name


def test_check_runs_one_step_and_shows_the_auto_settings(
    tmp_path: Path,
    tiny_model_dir: Path,
    toy_data,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = ["check", "--model", str(tiny_model_dir), "--train", str(toy_data["train"])]
    assert main([*argv, "--lr", "1e-3", "--set", "training.precision=fp32"]) == 0
    out = capsys.readouterr().out
    assert "one step      : loss" in out and "ready to train" in out
    assert "training.max_length = 32" in out and "source:" in out
    assert "training.lr = 0.001  (yours; auto would choose" in out
    assert list(work.iterdir()) == []  # nothing written
    # A bad column is the same named error as in train, before any training.
    assert main([*argv, "--label-column", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
