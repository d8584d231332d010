"""Load a finished run's exported model and use it: predict, evaluate a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from finekit.errors import RunDirError
from finekit.evaluate.runner import run_outputs
from finekit.models.base import FAMILIES
from finekit.recipe import Recipe
from finekit.rundir import RECIPE, RUN_JSON, TASK_JSON, is_run_dir, read_json, write_json
from finekit.tasks.base import Task, build_task


@dataclass
class LoadedRun:
    run_dir: Path
    recipe: Recipe
    task: Task
    model: nn.Module
    processor: Any

    def predict(
        self, rows: pd.DataFrame | list[str], batch_size: int | None = None
    ) -> list[dict[str, Any]]:
        """Predictions for a DataFrame with the input columns, or a list of texts."""
        if isinstance(rows, list):
            rows = pd.DataFrame({self.recipe.data.text_column: rows})
        rows = self.task.read_inputs(rows, "input")
        return self.task.predict(
            self.model, self.processor, rows, batch_size or self.recipe.training.eval_batch_size
        )

    def evaluate(
        self, df: pd.DataFrame, source: str, out_dir: Path | None = None, split: str = "eval"
    ) -> dict[str, Any]:
        """Metrics of the exported model on labelled rows (fp32, deterministic order)."""
        rows = self.task.read_inputs(df, source, with_labels=True)
        ds = self.task.encode(rows, self.processor, split)
        out = run_outputs(
            self.task,
            self.model,
            ds,
            self.task.collator(self.processor),
            self.recipe.training.eval_batch_size,
        )
        metrics = self.task.metrics(out)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            files = (
                self.task.artifacts(out, out_dir, split, rows)
                if self.recipe.evaluation.artifacts
                else []
            )
            explain = getattr(self.task, "explain", None)  # e.g. Grad-CAM heat maps
            if explain is not None and self.recipe.evaluation.artifacts:
                files += explain(self.model, self.processor, rows, out_dir, split)
            write_json(
                out_dir / f"{split}.json",
                {"source": source, "metrics": metrics, "artifacts": files},
            )
        return metrics


def load_run(run_dir: str | Path, device: str | None = None) -> LoadedRun:
    """The exported model of a run, with its task (labels...) and recipe."""
    path = Path(run_dir)
    if not is_run_dir(path):
        raise RunDirError(f"{path} is not a finekit run directory (no run.json)")
    model_dir = path / "model"
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        raise RunDirError(f"{path} has no exported model/ (did the run finish?)")
    recipe = Recipe.from_yaml(path / RECIPE)
    task = build_task(recipe.task)
    task.load_state(read_json(path / TASK_JSON))
    run = read_json(path / RUN_JSON)
    family = FAMILIES.get(run.get("model", {}).get("family", "hf"))
    spec = recipe.model.model_copy(
        update={"path": str(path / "model"), "init": "pretrained", "trust_remote_code": False}
    )
    loaded = family.load(spec, task.head(), pretrained=True, exact=True)
    model = loaded.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    return LoadedRun(path, recipe, task, model, loaded.processor)
