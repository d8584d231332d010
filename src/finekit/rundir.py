"""The run directory: everything a run made, and the rules for (re)using one.

recipe.yaml     the resolved recipe          metrics.jsonl   one JSON row per log/eval
run.json        the summary (metrics...)     task.json       task state for inference
checkpoints/    step-NNNNNNNN/ (atomic)      model/          exported, from_pretrained-able
adapter/        PEFT adapter (peft format)   eval/           per-split metrics + plots
train.log       the log                      tune/           --auto-tune's study and trials
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from finekit.errors import RunDirError
from finekit.recipe import Recipe

RUN_JSON = "run.json"
RECIPE = "recipe.yaml"
TASK_JSON = "task.json"
TUNE = "tune"


def is_run_dir(path: Path) -> bool:
    """A folder finekit made: it has run.json with our marker."""
    try:
        return "finekit_version" in json.loads((path / RUN_JSON).read_text())
    except (OSError, ValueError):
        return False


def default_dir(recipe: Recipe) -> Path:
    return Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(recipe: Recipe, resume: bool, main_process: bool = True) -> Path:
    """Where the run goes, and whether that is allowed; writes nothing.

    New run: the folder must not exist, be empty, or be a finekit run with
    `output.overwrite`. Resume: it must be a finekit run of the same recipe.
    """
    if recipe.output.dir:
        path = Path(recipe.output.dir)
    else:
        name = [str(default_dir(recipe)) if main_process else ""]
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        if PartialState().num_processes > 1:  # every rank must use rank 0's timestamp
            broadcast_object_list(name)
        path = Path(name[0])
    if resume:
        if not is_run_dir(path):
            raise RunDirError(f"--resume {path}: not a finekit run directory (no run.json)")
        stored = Recipe.from_yaml(path / RECIPE)
        diff = recipe_diff(stored, recipe)
        if diff:
            raise RunDirError(
                f"--resume {path}: the recipe differs from the run's own recipe.yaml in "
                f"{', '.join(diff)}; resume with the same recipe (or none: `--resume DIR`)"
            )
        return path
    # A folder holding only --auto-tune's search is where that search's chosen run goes.
    only_tune = path.is_dir() and {p.name for p in path.iterdir()} <= {TUNE}
    if path.exists() and not only_tune and (not path.is_dir() or any(path.iterdir())):
        if not path.is_dir() or not is_run_dir(path):
            raise RunDirError(
                f"output directory {path} exists and is not a finekit run; choose another "
                "--output (finekit never writes into folders it did not make)"
            )
        if not recipe.output.overwrite:
            raise RunDirError(
                f"output directory {path} already holds a finekit run; continue it with "
                "--resume, or replace it with --set output.overwrite=true"
            )
    return path


def create_run_dir(recipe: Recipe, path: Path) -> Path:
    """Make the run directory (replacing an old run when allowed by `check_run_dir`)."""
    if path.exists() and is_run_dir(path):
        for child in path.iterdir():  # an --auto-tune search (tune/) outlives its run
            if child.name == TUNE:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    recipe.model_copy(
        update={"output": recipe.output.model_copy(update={"dir": str(path)})}
    ).to_yaml(path / RECIPE)
    write_json(
        path / RUN_JSON,
        {
            "finekit_version": _version(),
            "status": "running",
            "name": recipe.name,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    return path


def mark_failed(path: Path, error: BaseException) -> None:
    """Record why a run stopped; its checkpoints stay for --resume."""
    try:
        run = read_json(path / RUN_JSON)
    except (OSError, ValueError):
        return
    if run.get("status") == "completed":
        return
    run.update(
        {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    write_json(path / RUN_JSON, run)


def recipe_diff(a: Recipe, b: Recipe) -> list[str]:
    """Dotted fields that differ, ignoring where the output goes. A field `auto` can fill
    matches either way (a stored recipe holds its resolved value; `auto` resolves the same
    way on the same data)."""
    from finekit.recipe.auto import fallbacks

    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("output", None)
    resolvable = set(fallbacks(a)) | set(fallbacks(b))
    return _diff(da, db, "", resolvable)


def _diff(a: Any, b: Any, prefix: str, resolvable: set[str]) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.", resolvable)
        return out
    if "auto" in (a, b) and prefix.rstrip(".") in resolvable:
        return []
    return [] if a == b else [prefix.rstrip(".")]


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic JSON write (temp file + rename): readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _version() -> str:
    from finekit.version import __version__

    return __version__
