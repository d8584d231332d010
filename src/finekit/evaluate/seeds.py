"""`finekit train RECIPE --seeds N`: the same recipe at seeds s, s+1, ..., s+N-1.

On a small data set one run's score is one draw: the head's initialisation, the batch
order and dropout move test accuracy by points. Each seed is a normal run directory
(DIR/seed-<s>/); DIR/seeds.json holds mean, standard deviation and the values of every
numeric validation and test metric. Rerunning skips finished seeds and resumes an
interrupted one (the same helpers and aggregation as `finekit compare`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finekit.errors import RecipeError, RunDirError
from finekit.evaluate.compare import run_or_skip, spread
from finekit.recipe import Recipe
from finekit.rundir import recipe_diff, write_json

SEEDS_JSON = "seeds.json"
SEEDS_RECIPE = "seeds-recipe.yaml"
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
    from finekit.api import make_recipe

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise RecipeError(f"--seeds must be a whole number >= 1, got {seeds!r}")
    r = make_recipe(recipe)
    out = Path(output or r.output.dir or f"runs/{r.name}-seeds")
    stored = out / SEEDS_RECIPE
    if out.exists() and any(out.iterdir()):
        if not stored.is_file():
            raise RunDirError(
                f"seeds directory {out} exists and is not a finekit seeds run; "
                "choose another --output"
            )
        diff = recipe_diff(Recipe.from_yaml(stored), r)
        if diff:
            raise RunDirError(
                f"seeds directory {out} was made by another recipe (differs in "
                f"{', '.join(diff)}); use another --output"
            )
    out.mkdir(parents=True, exist_ok=True)
    r.to_yaml(stored)
    seed_list = [r.training.seed + i for i in range(seeds)]
    runs: dict[int, dict[str, Any]] = {}
    for i, seed in enumerate(seed_list, 1):
        run_dir = out / f"seed-{seed}"
        cell = r.with_overrides(
            {
                "training.seed": seed,
                "output.dir": str(run_dir),
                "output.overwrite": False,
                "name": f"{r.name}-seed-{seed}",
            }
        )
        runs[seed] = run_or_skip(cell, run_dir, f"[{i}/{seeds}] seed={seed}", echo)
    result = {
        "recipe": r.name,
        "seeds": seed_list,
        "runs": [f"seed-{s}" for s in seed_list],
        "metrics": aggregate_metrics([runs[s].get("metrics", {}) for s in seed_list]),
    }
    write_json(out / SEEDS_JSON, result)
    echo(format_table(result, out))
    return result


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


def format_table(result: dict[str, Any], out: Path) -> str:
    """`split  metric  mean ± std` lines, the headline splits first."""
    n = len(result["seeds"])
    lines = [f"{n} seeds ({', '.join(map(str, result['seeds']))}) in {out}:"]
    lines.append(f"{'split':<11} {'metric':<28} mean ± std")
    for split, metrics in result["metrics"].items():
        for name, s in metrics.items():
            mean, std = s["mean"], s["std"]
            shown = "nan" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"
            lines.append(f"{split:<11} {name:<28} {shown}")
    return "\n".join(lines)
