"""`finekit train RECIPE --seeds N` / `--folds K`: repeated runs of one recipe, mean ± std.

`--seeds N`: the same recipe at seeds s, s+1, ..., s+N-1.

On a small data set one run's score is one draw: the head's initialisation, the batch
order and dropout move test accuracy by points. Each seed is a normal run directory
(DIR/seed-<s>/); DIR/seeds.json holds mean, standard deviation and the values of every
numeric validation and test metric. Rerunning skips finished seeds and resumes an
interrupted one (the same helpers and aggregation as `finekit compare`).

`--folds K`: K-fold cross-validation. Run i validates on fold i of a seeded (stratified for
classes) K-fold partition of data.train and trains on the other K-1 folds (DIR/fold-<i>/);
DIR/folds.json holds mean ± std over folds. The validation means are the cross-validated
estimate (every training example is validated once); with early stopping on, each fold's
best checkpoint is chosen on its own validation fold, so that estimate is optimistic — read
the test metrics, if there is a test split, for an unbiased one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finekit.errors import RecipeError, RunDirError
from finekit.experiments.compare import run_or_skip, spread
from finekit.recipe import Recipe
from finekit.rundir import recipe_diff, write_json

SEEDS_JSON = "seeds.json"
SEEDS_RECIPE = "seeds-recipe.yaml"
FOLDS_JSON = "folds.json"
FOLDS_RECIPE = "folds-recipe.yaml"
SPLITS = ("validation", "test")


def finetune_seeds(
    recipe: Recipe | str | Path | dict[str, Any],
    seeds: int = 3,
    output: str | Path | None = None,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run `recipe` with `seeds` consecutive seeds from `training.seed` into
    `output` (default: the recipe's `output.dir`, else runs/<name>-seeds); write and
    return the seeds.json summary, and echo a `metric  mean ± std` table."""
    from finekit.run import make_recipe

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise RecipeError(f"--seeds must be a whole number >= 1, got {seeds!r}")
    r = make_recipe(recipe)
    out = _repeat_dir(r, output, "seeds", SEEDS_RECIPE)
    seed_list = [r.training.seed + i for i in range(seeds)]
    cells = [
        (f"seed-{s}", f"seed={s}", {"training.seed": s, "name": f"{r.name}-seed-{s}"})
        for s in seed_list
    ]
    runs = _run_cells(r, cells, out, echo)
    result = {
        "recipe": r.name,
        "seeds": seed_list,
        "runs": [c[0] for c in cells],
        "metrics": aggregate_metrics(runs),
    }
    write_json(out / SEEDS_JSON, result)
    echo(format_table(result, out, f"{seeds} seeds ({', '.join(map(str, seed_list))})"))
    return result


def finetune_folds(
    recipe: Recipe | str | Path | dict[str, Any],
    folds: int = 5,
    output: str | Path | None = None,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """K-fold cross-validation: run `recipe` once per fold (`data.folds = {k, index}`:
    validation is that fold of data.train, training the other k-1) into `output`/fold-<i>/
    (default: the recipe's `output.dir`, else runs/<name>-folds); write and return
    folds.json (mean ± std over folds of every validation and test metric)."""
    from finekit.run import make_recipe

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise RecipeError(f"--folds must be a whole number >= 2, got {folds!r}")
    r = make_recipe(recipe)
    if r.data.folds is not None:
        raise RecipeError("--folds sets data.folds for each run; remove data.folds from the recipe")
    if r.data.validation is not None:
        raise RecipeError(
            f"--folds cross-validates on folds of data.train ({r.data.train}); the recipe also "
            f"names data.validation ({r.data.validation}): drop it"
        )
    # The stored recipe carries k, so a rerun with another number of folds is refused
    # (its fold-<i> runs would be skipped as finished and mixed into the new mean).
    out = _repeat_dir(
        r.with_overrides({"data.folds": {"k": folds, "index": 0}}), output, "folds", FOLDS_RECIPE
    )
    cells = [
        (
            f"fold-{i}",
            f"fold={i + 1}/{folds}",
            {"data.folds": {"k": folds, "index": i}, "name": f"{r.name}-fold-{i}"},
        )
        for i in range(folds)
    ]
    runs = _run_cells(r, cells, out, echo)
    result = {
        "recipe": r.name,
        "folds": folds,
        "seed": r.training.seed,
        "runs": [c[0] for c in cells],
        "metrics": aggregate_metrics(runs),
    }
    write_json(out / FOLDS_JSON, result)
    echo(format_table(result, out, f"{folds}-fold cross-validation (seed {r.training.seed})"))
    return result


def _repeat_dir(r: Recipe, output: str | Path | None, kind: str, stored_name: str) -> Path:
    """The output folder, refusing one made by another recipe (or not by finekit)."""
    out = Path(output or r.output.dir or f"runs/{r.name}-{kind}")
    stored = out / stored_name
    if out.exists() and any(out.iterdir()):
        if not stored.is_file():
            raise RunDirError(
                f"{kind} directory {out} exists and is not a finekit {kind} run; "
                "choose another --output"
            )
        diff = recipe_diff(Recipe.from_yaml(stored), r)
        if diff:
            raise RunDirError(
                f"{kind} directory {out} was made by another recipe (differs in "
                f"{', '.join(diff)}); use another --output"
            )
    out.mkdir(parents=True, exist_ok=True)
    r.to_yaml(stored)
    return out


def _run_cells(
    r: Recipe,
    cells: list[tuple[str, str, dict[str, Any]]],
    out: Path,
    echo: Callable[[str], Any],
) -> list[dict[str, Any]]:
    """Each (folder, label, overrides) as a run in out/folder (finished ones skipped,
    interrupted ones resumed); their metrics in order."""
    metrics = []
    for i, (folder, label, over) in enumerate(cells, 1):
        run_dir = out / folder
        cell = r.with_overrides({**over, "output.dir": str(run_dir), "output.overwrite": False})
        run = run_or_skip(cell, run_dir, f"[{i}/{len(cells)}] {label}", echo)
        metrics.append(run.get("metrics", {}))
    return metrics


def aggregate_metrics(per_run: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """split -> metric -> spread, for every numeric metric that each run reports."""
    out: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        if not per_run or not all(split in m for m in per_run):
            continue
        names = [
            k
            for k, v in per_run[0][split].items()
            if _number(v) and all(_number(m[split].get(k)) for m in per_run)
        ]
        out[split] = {k: spread([float(m[split][k]) for m in per_run]) for k in names}
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def format_table(result: dict[str, Any], out: Path, title: str) -> str:
    """`split  metric  mean ± std` lines, the headline splits first."""
    lines = [f"{title} in {out}:"]
    lines.append(f"{'split':<11} {'metric':<28} mean ± std")
    for split, metrics in result["metrics"].items():
        for name, s in metrics.items():
            mean, std = s["mean"], s["std"]
            shown = "nan" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"
            lines.append(f"{split:<11} {name:<28} {shown}")
    return "\n".join(lines)
