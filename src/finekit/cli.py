"""The `finekit` command (typer). Thin: parse, build a Recipe, call the library.

Any `FinekitError` (bad input) is printed as one line and exits with status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from finekit.errors import FinekitError, RecipeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune pre-trained models for one task with little data.",
)


def _version(value: bool) -> None:
    if value:
        from finekit.version import __version__

        typer.echo(f"finekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Fine-tune pre-trained models for one task with little data."""


def _registered(kind: str) -> str:
    """The names a registry holds, for help texts (built-in and installed plug-ins)."""
    from finekit.core.contracts import METHODS, TASKS

    return ", ".join((TASKS if kind == "task" else METHODS).names())


SetOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 (typer needs Optional here on 3.10)
    typer.Option(
        "--set", "-s", help="Override any recipe field (repeatable): --set training.lr=3e-5"
    ),
]
DataDirOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--data-dir",
        help="Folder holding the recipe's named data sets (<dir>/<name>/); default: "
        "$FINEKIT_DATA, else ~/.cache/finekit/data",
    ),
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Log every step of the run (INFO level)")
]
InputOpt = Annotated[
    str,
    typer.Option(
        "--input",
        "-i",
        "--data",
        help="Input file (csv/tsv/jsonl/parquet; images: a folder or .npz). --data is the "
        "older name",
    ),
]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("finekit").setLevel(logging.INFO)


def _common_sections(
    model: str | None,
    train: str | None,
    validation: str | None,
    test: str | None,
    text_column: str | None,
    label_column: str | None,
    method: str | None,
    epochs: float | None,
    lr: float | None,
    batch_size: int | None,
    k_per_class: int | None,
    output: str | None,
) -> dict[str, Any]:
    """The `finekit train --model M --train F ...` flags as recipe sections."""
    sec: dict[str, Any] = {}
    if model:
        sec["model"] = {"path": model}
    data = {
        k: v
        for k, v in {
            "train": train,
            "validation": validation,
            "test": test,
            "text_column": text_column,
            "label_column": label_column,
            "k_per_class": k_per_class,
        }.items()
        if v is not None
    }
    if data:
        sec["data"] = data
    if method:
        sec["method"] = {"name": method}
    training = {
        k: v
        for k, v in {"epochs": epochs, "lr": lr, "batch_size": batch_size}.items()
        if v is not None
    }
    if training:
        sec["training"] = training
    if output:
        sec["output"] = {"dir": output}
    return sec


def _build_recipe(
    recipe: Path | None,
    sets: list[str] | None,
    sections: dict[str, Any],
    data_dir: str | None = None,
):
    from finekit.recipe import Recipe, apply_overrides, deep_merge
    from finekit.run import make_recipe

    if recipe is not None:
        replaced = set(sections.get("data", {}))  # flags name their own files
        base = Recipe.from_yaml(recipe, sets, data_dir, replaced).to_dict()
    elif "model" in sections and "data" in sections:
        base = {"name": Path(sections["data"].get("train", "run")).stem}
    else:
        raise RecipeError(
            "give a recipe file (finekit train RECIPE.yaml) or at least --model and --train"
        )
    merged = apply_overrides(deep_merge(base, sections), sets or [])
    return make_recipe(merged)


# The flags of the common case (`finekit train --model M --train F ...`), shared by `check`.
ModelOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Pre-trained model: a local folder, a hub id or finekit:<alias>"),
]
TrainOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--train", help="Training data (csv/tsv/jsonl/parquet, a folder, .npz, hf://)"),
]
ValidationOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Validation data (default: 10% held out of --train, stratified)"),
]
TestOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Test data, scored once at the end (default: none)"),
]
TaskOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help=f"Task: {_registered('task')} (default classify)"),
]
TextColumnOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Column with the input text (default text)"),
]
LabelColumnOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Column with the label or target (default label)"),
]
MethodOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help=f"Fine-tuning method: {_registered('method')} (default full)"),
]
EpochsOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(help="Passes over the training data (default: auto, from the data size)"),
]
LrOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(help="Learning rate of the body (default: auto, by model size and method)"),
]
BatchOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(help="Examples per optimizer step and device (default: auto)"),
]
KOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(help="Few-shot: keep K training examples per class (sampled by seed)"),
]
RecipeArg = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Argument(help="Recipe YAML file (or give --model and --train)"),
]


def _flags_recipe(
    recipe: Path | None,
    set_: list[str] | None,
    data_dir: str | None,
    model: str | None,
    train_file: str | None,
    validation: str | None,
    test: str | None,
    task: str | None,
    text_column: str | None,
    label_column: str | None,
    method: str | None,
    epochs: float | None,
    lr: float | None,
    batch_size: int | None,
    k_per_class: int | None,
    output: str | None,
    resume: Path | None = None,
):
    from finekit.rundir import RECIPE

    sections = _common_sections(
        model,
        train_file,
        validation,
        test,
        text_column,
        label_column,
        method,
        epochs,
        lr,
        batch_size,
        k_per_class,
        output,
    )
    if task:
        sections["task"] = {"name": task}
    if resume is not None:
        if recipe is None and not (resume / RECIPE).is_file():
            raise RecipeError(f"--resume {resume}: no {RECIPE} there; is it a finekit run?")
        recipe = recipe or resume / RECIPE
        sections.setdefault("output", {})["dir"] = str(resume)
    return _build_recipe(recipe, set_, sections, data_dir)


@app.command()
def train(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    output: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--output", "-o", help="Run directory (default runs/<name>-<time>)"),
    ] = None,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Continue this run directory from its newest checkpoint"),
    ] = None,
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    train_file: TrainOpt = None,
    validation: ValidationOpt = None,
    test: TestOpt = None,
    task: TaskOpt = None,
    text_column: TextColumnOpt = None,
    label_column: LabelColumnOpt = None,
    method: MethodOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    k_per_class: KOpt = None,
    seeds: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Run N seeds into OUTPUT/seed-<s>/; mean ± std in seeds.json"),
    ] = None,
    folds: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="K-fold cross-validation on the training data: OUTPUT/fold-<i>/, "
            "mean ± std in folds.json"
        ),
    ] = None,
    auto_tune: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="Try N settings (rates, epochs; Optuna) on the validation split, never the "
            "test, and train the best; the study is in OUTPUT/tune/ (rerun to resume)"
        ),
    ] = None,
    auto_tune_budget: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Stop the --auto-tune search after this many seconds"),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Fine-tune: from a recipe file, or from flags for the common case. Settings you do
    not give are chosen from the data (`auto`; run.json says what and why)."""
    from finekit.run import finetune

    _setup_logging(verbose)
    r = _flags_recipe(
        recipe,
        set_,
        data_dir,
        model,
        train_file,
        validation,
        test,
        task,
        text_column,
        label_column,
        method,
        epochs,
        lr,
        batch_size,
        k_per_class,
        output,
        resume,
    )
    if auto_tune_budget is not None and auto_tune is None and r.training.auto_tune is None:
        raise RecipeError("--auto-tune-budget caps an --auto-tune search: give --auto-tune N")
    if auto_tune is not None or auto_tune_budget is not None:
        tuning = {"training.auto_tune": auto_tune or r.training.auto_tune}
        if auto_tune_budget is not None:
            tuning["training.auto_tune_budget"] = auto_tune_budget
        r = r.with_overrides(tuning)
    if r.training.auto_tune is not None:
        from finekit.experiments.tune import tune

        if seeds is not None or folds is not None or resume is not None:
            raise RecipeError(
                "--auto-tune resumes by itself (rerun the same command); it does not combine "
                "with --seeds, --folds or --resume"
            )
        _print_result(tune(r, echo=typer.echo))
        return
    if seeds is not None and folds is not None:
        raise RecipeError("--seeds and --folds each repeat the run; give one of them")
    if seeds is not None or folds is not None:
        from finekit.experiments.seeds import finetune_folds, finetune_seeds

        flag = "--seeds" if seeds is not None else "--folds"
        if resume is not None:
            raise RecipeError(f"{flag} resumes by itself: rerun the same command without --resume")
        if seeds is not None:
            finetune_seeds(r, seeds, echo=typer.echo)
        else:
            finetune_folds(r, folds, echo=typer.echo)  # type: ignore[arg-type]
        return
    result = finetune(r, resume=resume is not None)
    _print_result(result)


@app.command()
def check(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    train_file: TrainOpt = None,
    validation: ValidationOpt = None,
    test: TestOpt = None,
    task: TaskOpt = None,
    text_column: TextColumnOpt = None,
    label_column: LabelColumnOpt = None,
    method: MethodOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    k_per_class: KOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Check a recipe (or the same flags as train) without training: the data checks, the
    model load, one forward/backward step, and the settings `auto` resolves, with why."""
    from finekit.run.check import check as run_check

    _setup_logging(verbose)
    r = _flags_recipe(
        recipe,
        set_,
        data_dir,
        model,
        train_file,
        validation,
        test,
        task,
        text_column,
        label_column,
        method,
        epochs,
        lr,
        batch_size,
        k_per_class,
        None,
    )
    result = run_check(r)
    for line in result.lines():
        typer.echo(line)
    typer.echo("ok: ready to train (nothing was written)")


@app.command()
def pretrain(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file")],
    set_: SetOpt = None,
    output: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--output", "-o", help="Run directory (default runs/<name>-<time>)"),
    ] = None,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Continue this run directory from its newest checkpoint"),
    ] = None,
    data_dir: DataDirOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train the recipe's architecture from random initialisation (model.init=scratch):
    the same config, tokenizer, task and loop, no pre-trained weights — the baseline that
    shows what pre-training was worth (for LMs, pre-training from scratch)."""
    train(
        recipe=recipe,
        set_=[*(set_ or []), "model.init=scratch"],
        output=output,
        resume=resume,
        data_dir=data_dir,
        verbose=verbose,
    )


def _print_result(result: Any) -> None:
    typer.echo(f"run directory : {result.run_dir}")
    typer.echo(f"model         : {result.model_dir}")
    for split, m in result.metrics.items():
        if "perplexity" in m:  # language models: before -> after
            before = m.get("perplexity_before")
            typer.echo(
                f"{split:<14}: perplexity "
                + (f"{before:.2f} -> " if isinstance(before, (int, float)) else "")
                + f"{m['perplexity']:.2f}"
            )
            continue
        typer.echo(
            f"{split:<14}: accuracy {m.get('accuracy', float('nan')):.4f}  "
            f"macro-F1 {m.get('macro_f1', float('nan')):.4f}"
        )
    t = result.train
    typer.echo(
        f"train         : {t['seconds']:.1f} s, {t['samples_per_second']:.1f} samples/s, "
        f"{t['trainable_parameters']:,} trainable parameters, {t['precision']}"
    )


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="Run directory")],
    data: InputOpt,
    verbose: VerboseOpt = False,
) -> None:
    """Metrics of a run's exported model on a labelled file (same columns as training),
    written to RUN/eval/."""
    from finekit.serve.predict import load_run

    _setup_logging(verbose)
    loaded = load_run(run)
    split = Path(data).stem
    m = loaded.evaluate(loaded.read(data), data, out_dir=run / "eval", split=split)
    m.pop("confusion_matrix", None)
    m.pop("calibration_bins", None)  # in RUN/eval/<split>.json and the reliability plot
    per_class = m.pop("per_class", {})
    typer.echo(json.dumps(m, indent=2))
    typer.echo(
        f"per-class metrics and the confusion matrix: {run / 'eval' / (split + '.json')}"
        f" ({len(per_class)} classes)"
    )


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to classify")] = None,  # noqa: UP045
    input_: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--input", "-i", help="Input file (csv/tsv/jsonl/parquet; images: folder/.npz)"
        ),
    ] = None,
    output: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--output", "-o", help="Output file (by suffix; default: CSV on stdout)"),
    ] = None,
) -> None:
    """Predict labels for texts, or for a file (csv/tsv/jsonl/parquet) into a file."""
    from finekit.serve.predict import load_run

    _setup_logging(False)
    if not texts and not input_:
        raise RecipeError("give texts to classify or --input FILE")
    loaded = load_run(run)
    if input_:
        df = loaded.read(input_)
        preds = loaded.predict(df)
        if preds and "label" not in preds[0]:  # e.g. causal_lm: {"text": continuation}
            out = df.assign(**{f"generated_{k}": [p[k] for p in preds] for k in preds[0]})
        else:
            out = df.assign(
                predicted_label=[p["label"] for p in preds],
                score=[round(p["score"], 6) for p in preds],
            )
        arrays = [c for c in out.columns if len(out) and getattr(out[c].iloc[0], "ndim", 0) >= 2]
        out = out.drop(columns=arrays)  # image arrays (from an .npz) are not written back
        if output:
            _write_table(out, output)
            typer.echo(f"{len(out)} predictions -> {output}")
        else:
            typer.echo(out.to_csv(index=False), nl=False)
    if texts:
        for text, p in zip(texts, loaded.predict(list(texts)), strict=True):
            if "label" not in p:  # a generation: the prompt, then its continuation
                typer.echo(f"{text}\t{p.get('text', p)!r}")
                continue
            typer.echo(f"{p['label']}\t{p['score']:.4f}\t{text}")


@app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="Run directory of a chat run")],
    input_: Annotated[
        str, typer.Option("--input", "-i", help="Input file with a `messages` or `prompt` column")
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Output file (.jsonl, .csv...)")],
) -> None:
    """Replies of a chat run for every row of a file (`messages` or `prompt` column)."""
    from finekit.serve.chat import generate_file
    from finekit.serve.predict import load_run

    _setup_logging(False)
    out = generate_file(load_run(run), input_, output)
    typer.echo(f"{len(out)} replies -> {output}")


@app.command()
def chat(run: Annotated[Path, typer.Argument(help="Run directory of a chat run")]) -> None:
    """Talk to a chat run (history kept, replies streamed); `exit` or Ctrl-D quits."""
    from finekit.serve.chat import chat_loop
    from finekit.serve.predict import load_run

    _setup_logging(False)
    chat_loop(load_run(run))


def _write_table(df: Any, path: str) -> None:
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    else:
        df.to_csv(path, index=False)


@app.command()
def compare(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file")],
    against: Annotated[
        str,
        typer.Option(
            help="Rungs beside the recipe's own method: "
            "scratch,scratch-same,linear-probe,partial,lora,full"
        ),
    ] = "scratch",
    sizes: Annotated[
        str, typer.Option(help="Examples per class (or total), and/or 'full'")
    ] = "full",
    seeds: Annotated[int, typer.Option(help="Seeds per cell (mean ± std)")] = 1,
    min_steps: Annotated[
        int, typer.Option(help="Raise epochs so small sizes get at least this many steps")
    ] = 300,
    output: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--output", "-o", help="Compare directory (default runs/compare-<name>-<time>)"
        ),
    ] = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """The baseline ladder: the recipe vs scratch / linear-probe / lora / full, per size
    and seed, with learning curves and a report. Rerunning skips finished runs."""
    import time

    from finekit.experiments.compare import compare as run_compare
    from finekit.recipe import Recipe

    _setup_logging(verbose)
    r = Recipe.from_yaml(recipe, overrides=set_ or [], data_dir=data_dir)
    out = output or f"runs/compare-{r.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_compare(r, against, sizes, seeds, out, echo=typer.echo, min_steps=min_steps)
    typer.echo("")
    for c in result["cells"]:
        value = "n/a" if c["mean"] is None else f"{c['mean']:.4f} ± {c['std']:.4f}"
        typer.echo(f"{c['rung']:<13} size={c['size']!s:<5} {result['metric']} {value}")
    for g in result["gains"]:
        typer.echo(
            f"recipe vs {g['against']:<13} size={g['size']!s:<5} {g['mean']:+.4f} ± "
            f"{g['std']:.4f} (paired by seed; recipe better in "
            f"{g['recipe_better_in']} of {len(g['values'])})"
        )
    typer.echo(f"compare directory: {out} (compare.json, learning_curve.png, report.html)")


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="Run directory or compare directory")],
) -> None:
    """Write the self-contained HTML report (plots embedded) of a run or a compare."""
    from finekit.report import write_report

    _setup_logging(False)
    typer.echo(str(write_report(path)))


@app.command("recipe")
def recipe_cmd(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe file to validate")] = None,  # noqa: UP045
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print the fully resolved recipe (all defaults) of a file, or a starting template."""
    from finekit.recipe import Recipe, apply_overrides
    from finekit.run import make_recipe

    if recipe is not None:
        r = Recipe.from_yaml(recipe, overrides=set_ or [], data_dir=data_dir)
    else:
        base = {
            "name": "my-run",
            "model": "finekit:minilm-l6",
            "data": {"train": "train.csv", "test": "test.csv"},
        }
        r = make_recipe(apply_overrides(base, set_ or []))
    typer.echo(r.to_yaml(), nl=False)


@app.command()
def demo(
    output: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--output", "-o", help="Folder for both runs (default runs/demo-<time>)"),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Offline: fine-tune the packaged MiniLM on built-in intents vs the same from scratch."""
    from finekit.demo import run_demo

    _setup_logging(verbose)
    run_demo(output, echo=typer.echo)


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0)
    except FinekitError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
