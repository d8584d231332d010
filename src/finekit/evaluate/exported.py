"""A finished run's exported model, loaded as `finekit eval`/`predict` see it: evaluate a
file (the run's own final evaluation goes through here too) or predict rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from finekit.core.contracts import Task, build_task, capabilities
from finekit.errors import DataError, RunDirError
from finekit.evaluate.base_model import score_rows
from finekit.evaluate.runner import run_outputs
from finekit.evaluate.slices import check_slice_columns, slice_metrics, task_metric
from finekit.models.base import FAMILIES
from finekit.recipe import Recipe
from finekit.rundir import RECIPE, RUN_JSON, TASK_JSON, is_run_dir, read_json, write_json


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
        """Predictions for a DataFrame with the input columns, or a list of texts (image
        paths or arrays for image tasks)."""
        if isinstance(rows, list):  # texts, or image paths/arrays for an image task
            d = self.recipe.data
            if d.text_pair_column:
                raise DataError(
                    f"{self.run_dir}: this model classifies sentence pairs (columns "
                    f"{d.text_column!r} and {d.text_pair_column!r}); give a table with both "
                    "(a DataFrame, or --input FILE), not single texts"
                )
            files = capabilities(self.task).files
            column = files.input_column if files is not None else d.text_column
            rows = pd.DataFrame({column: rows})
        rows = self.task.read_inputs(rows, "input")
        return self.task.predict(
            self.model, self.processor, rows, batch_size or self.recipe.training.eval_batch_size
        )

    def read(self, path: str) -> pd.DataFrame:
        """A file to evaluate or predict: a table, or a saved DatasetDict (its test split as
        the recipe names it, else its only split); a task that reads files of its own
        (images: .npz, folders, manifests) reads it its way."""
        from finekit.data.readers import dataset_dict_splits, read_table

        test, names = self.recipe.data.hf_splits["test"], dataset_dict_splits(path)
        hf_split = names[0] if len(names) == 1 else test
        files = capabilities(self.task).files
        if files is not None:
            return files.read_file(path, hf_split)
        return read_table(path, hf_split=hf_split)

    def evaluate(
        self,
        df: pd.DataFrame,
        source: str,
        out_dir: Path | None = None,
        split: str = "eval",
        require_slices: bool = True,
    ) -> dict[str, Any]:
        """Metrics of the exported model on labelled rows (fp32, deterministic order);
        per-slice metrics on `evaluation.slices` (all required unless `require_slices` is
        off, as for a validation part held out of a training file without them)."""
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
        caps = capabilities(self.task)
        if caps.generation_metrics is not None:  # e.g. chat: token F1, rule checks
            scorer = caps.generation_metrics
            metrics.update(scorer.generation_metrics(self.model, self.processor, rows))
        ev = self.recipe.evaluation
        columns = [c for c in ev.slices if c in rows.columns]
        if require_slices:
            check_slice_columns(rows, ev.slices, source)
        if columns:
            metric, higher = task_metric(ev, self.task)
            bs = self.recipe.training.eval_batch_size
            metrics["slices"] = slice_metrics(
                self.task,
                out,
                rows,
                columns,
                metric,
                higher,
                ev.slice_min_examples,
                ev.slice_gap_alarm,
                rescore=lambda sub: score_rows(self.task, self.model, self.processor, sub, bs),
            )
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            files = (
                self.task.artifacts(out, out_dir, split, rows)
                if self.recipe.evaluation.artifacts
                else []
            )
            if caps.explain is not None and self.recipe.evaluation.artifacts:  # e.g. Grad-CAM
                files += caps.explain.explain(self.model, self.processor, rows, out_dir, split)
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
    if _unmerged_adapter(path / "adapter"):  # e.g. prompt tuning: model/ is the base
        from peft import PeftModel

        loaded.model = PeftModel.from_pretrained(loaded.model, str(path / "adapter"))
    model = loaded.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    return LoadedRun(path, recipe, task, model, loaded.processor)


def _unmerged_adapter(adapter_dir: Path) -> bool:
    """An adapter that could not be merged into model/ (prompt learning: virtual tokens);
    a LoRA/IA3 adapter/ is a copy of what model/ already holds merged."""
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        return False
    from peft import PeftConfig

    return bool(PeftConfig.from_pretrained(str(adapter_dir)).is_prompt_learning)
