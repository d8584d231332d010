"""`finetune(recipe)`: one run, read top to bottom.

    check -> setup -> encode -> baselines -> fit -> export -> evaluate -> record

Each stage is a named function in `finekit.run.stages` taking and returning typed values;
run.json's final shape is `finekit.run.records.RunRecord`. Experiments that repeat runs
(the compare ladder, seeds, folds) sit above this in `finekit.experiments.compare/seeds`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finekit.errors import RecipeError
from finekit.evaluate.metrics import headline
from finekit.recipe import Recipe, deep_merge
from finekit.recipe.paths import anchor
from finekit.run import stages
from finekit.rundir import (
    RUN_JSON,
    check_run_dir,
    create_run_dir,
    mark_failed,
    read_json,
    write_json,
)
from finekit.train.distributed import process_state

log = logging.getLogger("finekit")


@dataclass
class FinetuneResult:
    """What a run produced (also in run_dir/run.json)."""

    run_dir: Path
    model_dir: Path
    metrics: dict[str, dict[str, Any]]  # split -> metrics of the exported model
    train: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)  # the whole run.json

    def __repr__(self) -> str:
        heads = {s: headline(m) for s, m in self.metrics.items()}
        return f"FinetuneResult(run_dir={str(self.run_dir)!r}, metrics={heads})"


def make_recipe(
    recipe: Recipe | str | Path | dict[str, Any] | None = None, **sections: Any
) -> Recipe:
    """A Recipe from a Recipe, a YAML path or a dict, with keyword sections merged on top:
    `make_recipe("r.yaml", training={"lr": 3e-5}, method="lora")`."""
    if recipe is None:
        base: dict[str, Any] = {}
    elif isinstance(recipe, Recipe):
        base = recipe.to_dict()
    elif isinstance(recipe, dict):
        base = recipe
    else:
        base = Recipe.from_yaml(recipe).to_dict()
    merged = deep_merge(base, sections)
    anchor(merged, Path.cwd())  # paths of flags and dicts: the working directory's, stored absolute
    return Recipe.from_dict(merged, source="finetune()")


def finetune(
    recipe: Recipe | str | Path | dict[str, Any] | None = None,
    *,
    resume: bool = False,
    callbacks: list[Any] | None = None,
    **sections: Any,
) -> FinetuneResult:
    """Run a recipe end to end; keyword arguments mirror the recipe's sections.

    With `resume=True`, `recipe.output.dir` must be an earlier run of the same recipe: it
    continues from its newest complete checkpoint.
    """
    r = make_recipe(recipe, **sections)
    if r.training.auto_tune is not None:
        raise RecipeError(
            "training.auto_tune searches over several runs: use finekit.tune(recipe) or "
            "`finekit train --auto-tune N`"
        )
    started = time.time()
    proc = process_state()  # accelerate's process info (rank, world size); no device work
    # 1. check: everything that can be wrong with the input fails here, before any write.
    run_dir = check_run_dir(r, resume, main_process=proc.is_main_process)
    setup = stages.setup(r)
    r = setup.recipe  # `auto` fields resolved from the data (setup.auto says why)
    # 2. Only now the run directory is made (by one process; the others wait for it).
    if proc.is_main_process and not resume:
        create_run_dir(r, run_dir)
        run = read_json(run_dir / RUN_JSON)
        write_json(run_dir / RUN_JSON, {**run, "auto": setup.auto.to_json()})
    elif resume:
        setup.auto_json = read_json(run_dir / RUN_JSON).get("auto")
    proc.wait_for_everyone()
    handler = stages.log_to(run_dir / "train.log") if proc.is_main_process else None
    if proc.is_main_process and not resume:  # once per run, console and train.log
        for line in setup.auto.lines():
            log.info("auto: %s", line)
    try:
        return _run(r, run_dir, resume, callbacks or [], started, setup)
    except BaseException as e:
        if proc.is_main_process:
            mark_failed(run_dir, e)
        raise
    finally:
        if handler is not None:
            logging.getLogger("finekit").removeHandler(handler)
            handler.close()


def _run(
    r: Recipe,
    run_dir: Path,
    resume: bool,
    callbacks: list[Any],
    started: float,
    setup: stages.Setup,
) -> FinetuneResult:
    """The stages after the run directory exists, in order."""
    data = stages.encode(r, setup)
    engine = stages.engine(r, setup, data)
    before = stages.baselines(r, setup, data, engine)
    fit = stages.fit(r, setup, data, engine, before, run_dir, resume, callbacks, started)
    if engine.accelerator.is_main_process:
        exported = stages.export(r, setup, fit, run_dir)
        metrics, files = stages.evaluate(r, setup, before, exported, run_dir)
        record = stages.record(r, setup, data, engine, fit, metrics, files, exported, started)
        stages.write_record(run_dir, record)
    engine.accelerator.wait_for_everyone()
    run = stages.read_run(run_dir)
    return FinetuneResult(
        run_dir=run_dir,
        model_dir=run_dir / "model",
        metrics=run.get("metrics", {}),
        train=run.get("train", {}),
        summary=run,
    )
