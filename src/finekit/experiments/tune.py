"""`--auto-tune N`: choose training settings on the validation split, never the test.

The `auto` settings are resolved first (they are trial 0, so the search can only keep them
or find better); Optuna's TPE sampler (Bergstra et al. 2011) then proposes the body's rate,
the new head's rate and the number of epochs around them, one full run per trial in
`RUN/tune/trial-<k>/`, each with the test split held out of training but never encoded or
scored (`evaluation.score_test: false`, and a separate test file is not even read). The
study lives in `RUN/tune/study.db` (SQLite): rerunning the command resumes it, keeping the
finished trials. The search stops after N trials or `training.auto_tune_budget` seconds;
the best setting by the validation metric is then trained once more into RUN itself, where
the test split is scored as in any run. `RUN/tune/trials.json` and `trials.png` record the
search; the run's report shows them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finekit.errors import RecipeError, RunDirError
from finekit.recipe import Recipe
from finekit.recipe.auto import concrete
from finekit.rundir import TUNE

log = logging.getLogger("finekit")
TRIALS_JSON = "trials.json"


@dataclass(frozen=True)
class Space:
    """Where the search looks, around the resolved `auto` values."""

    lr: float
    head_lr: float | None
    epochs: float
    max_steps: int | None

    def params(self, trial: Any) -> dict[str, Any]:
        # Rates on a log scale, a factor of 3 either way (fine-tuning optima are broad on
        # a log axis: Mosbach et al. 2021); the head's a factor of 10 down, 3 up.
        out: dict[str, Any] = {
            "training.lr": trial.suggest_float("lr", self.lr / 3, self.lr * 3, log=True)
        }
        if self.head_lr is not None:
            out["training.head_lr"] = trial.suggest_float(
                "head_lr", self.head_lr / 10, self.head_lr * 3, log=True
            )
        if self.max_steps is not None:
            lo, hi = max(1, self.max_steps // 2), self.max_steps * 2
            out["training.max_steps"] = trial.suggest_int("max_steps", lo, hi, log=True)
        else:
            lo_e, hi_e = max(1, math.floor(self.epochs / 2)), max(2, math.ceil(self.epochs * 2))
            out["training.epochs"] = float(trial.suggest_int("epochs", lo_e, hi_e, log=True))
        return out

    def defaults(self) -> dict[str, Any]:
        """Trial 0: the `auto` (or the user's) settings themselves."""
        out: dict[str, Any] = {"lr": self.lr}
        if self.head_lr is not None:
            out["head_lr"] = self.head_lr
        if self.max_steps is not None:
            out["max_steps"] = self.max_steps
        else:
            out["epochs"] = max(1, round(self.epochs))
        return out


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise RecipeError("training.auto_tune needs Optuna: pip install 'finekit[tune]'") from None
    return optuna


def tune(recipe: Recipe, echo: Callable[[str], Any] = print) -> Any:
    """Search, then train the best setting into the run directory; returns its
    FinetuneResult (with `summary["auto_tune"]`)."""
    from finekit.run import FinetuneResult, finetune
    from finekit.run.stages import resolve_auto
    from finekit.rundir import RECIPE, RUN_JSON, is_run_dir, read_json, recipe_diff, write_json

    n = recipe.training.auto_tune
    if n is None:
        raise RecipeError("tune(): set training.auto_tune (the number of trials)")
    if recipe.data.validation is None and recipe.data.validation_fraction == 0:
        raise RecipeError(
            "--auto-tune chooses on the validation split: give data.validation or keep "
            "data.validation_fraction above 0"
        )
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        raise RecipeError(
            "--auto-tune runs its trials one after another in one process; launch it without "
            "torchrun/accelerate (each trial may still use one GPU)"
        )
    optuna = _optuna()
    # A fixed default folder, so that rerunning the command resumes the search.
    out = Path(recipe.output.dir or Path("runs") / f"{recipe.name}-tune")
    _check_out(out, recipe)
    tune_dir = out / TUNE
    tune_dir.mkdir(parents=True, exist_ok=True)
    # Everything that chooses runs on this recipe: a test file is not even opened, a test
    # share of train is held out (so training sees the same rows) but never scored.
    base = recipe.with_overrides(
        {
            "training.auto_tune": None,
            "output.dir": str(out),
            "data.test": None,
            "evaluation.score_test": False,
        }
    )
    resolved = resolve_auto(base).recipe
    tr = resolved.training
    space = Space(
        lr=concrete(tr.lr, "training.lr"),
        head_lr=concrete(tr.head_lr, "training.head_lr"),
        epochs=concrete(tr.epochs, "training.epochs"),
        max_steps=tr.max_steps,
    )
    metric, mode = resolved.evaluation.metric, resolved.evaluation.resolved_mode()
    storage = f"sqlite:///{(tune_dir / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="finekit",
        storage=storage,
        load_if_exists=True,
        direction="maximize" if mode == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=recipe.training.seed),
    )
    # Seeded by the trials so far: a resumed search does not redraw its first samples.
    study.sampler = optuna.samplers.TPESampler(seed=recipe.training.seed + len(study.trials))
    states = optuna.trial.TrialState
    for t in study.trials:
        if t.state == states.RUNNING:  # an interrupted search: that trial reruns first
            study.tell(t.number, state=states.FAIL)
            study.enqueue_trial(t.params, user_attrs=dict(t.user_attrs))
    done = [t for t in study.trials if t.state == states.COMPLETE]
    if not study.trials:
        study.enqueue_trial(space.defaults(), user_attrs={"origin": "auto"})

    def objective(trial: Any) -> float:
        params = space.params(trial)
        trial_dir = tune_dir / f"trial-{trial.number}"
        r = base.with_overrides(
            {
                **params,
                "output.dir": str(trial_dir),
                "output.overwrite": True,
                "output.save_checkpoints": False,
                "evaluation.artifacts": False,
                "name": f"{recipe.name}-trial-{trial.number}",
            }
        )
        t0 = time.time()
        res = finetune(r)
        value = res.metrics.get("validation", {}).get(metric)
        if not isinstance(value, int | float) or math.isnan(value):  # e.g. diverged
            echo(f"  trial {trial.number}: no validation {metric} (diverged?); pruned")
            raise optuna.TrialPruned()
        trial.set_user_attr("seconds", round(time.time() - t0, 1))
        trial.set_user_attr("steps", res.train.get("steps"))
        echo(
            f"  trial {trial.number}: validation {metric} {value:.4f}  "
            + ", ".join(f"{k.split('.')[-1]}={v:.3g}" for k, v in params.items())
        )
        return float(value)

    todo = max(0, n - len(done))
    echo(f"auto-tune: {n} trials on validation {metric} ({len(done)} done), study {tune_dir}")
    if todo:
        study.optimize(
            objective,
            n_trials=todo,
            timeout=recipe.training.auto_tune_budget,
            catch=(),
        )
    best = study.best_trial
    chosen = space.params(optuna.trial.FixedTrial(best.params))
    record = _record(study, optuna, metric, mode, best, chosen)
    (tune_dir / TRIALS_JSON).write_text(json.dumps(record, indent=2) + "\n")
    trials_plot(record, tune_dir / "trials.png")
    default = record["default_value"]
    echo(
        f"auto-tune: best trial {best.number} (validation {metric} {best.value:.4f}; the auto "
        f"settings: {'n/a' if default is None else f'{default:.4f}'}); training it into {out}"
    )
    final = recipe.with_overrides(
        {**chosen, "training.auto_tune": None, "output.dir": str(out), "output.overwrite": False}
    )
    run = read_json(out / RUN_JSON) if is_run_dir(out) else {}
    same = bool(run) and not recipe_diff(Recipe.from_yaml(out / RECIPE), final)
    if run.get("status") == "completed" and same:  # a rerun of a finished search
        result = FinetuneResult(out, out / "model", run["metrics"], run["train"], run)
    else:
        # An unfinished final run of this setting resumes; one of an earlier choice (a
        # search since extended) is replaced (its tune/ folder stays).
        result = finetune(
            final.with_overrides({"output.overwrite": bool(run) and not same}), resume=same
        )
        run = read_json(out / RUN_JSON)
    run["auto_tune"] = {k: v for k, v in record.items() if k != "trials"}
    write_json(out / RUN_JSON, run)
    result.summary["auto_tune"] = record
    return result


def _check_out(out: Path, recipe: Recipe) -> None:
    """Before any trial: the output folder must be new, empty, or an earlier --auto-tune
    of this recipe (its tune/ folder, with or without the chosen run)."""
    from finekit.rundir import is_run_dir

    if not out.exists() or not any(out.iterdir()):
        return
    if (
        not out.is_dir()
        or not (out / TUNE).is_dir()
        or ({p.name for p in out.iterdir()} != {TUNE} and not is_run_dir(out))
    ):
        raise RunDirError(
            f"output directory {out} exists and is not an --auto-tune run; choose another "
            "--output (finekit never writes into folders it did not make)"
        )


def _record(
    study: Any, optuna: Any, metric: str, mode: str, best: Any, chosen: dict[str, Any]
) -> dict[str, Any]:
    trials = [
        {
            "number": t.number,
            "value": t.value,
            "params": t.params,
            "state": t.state.name,
            "origin": t.user_attrs.get("origin", "tpe"),
            "seconds": t.user_attrs.get("seconds"),
            "steps": t.user_attrs.get("steps"),
        }
        for t in study.trials
    ]
    autos = [t for t in trials if t["origin"] == "auto" and t["value"] is not None]
    default = autos[-1] if autos else None
    return {
        "metric": metric,
        "mode": mode,
        "trials": trials,
        "best_trial": best.number,
        "best_value": best.value,
        "chosen": chosen,
        "default_value": default["value"] if default else None,
        "sampler": "optuna TPESampler",
        "test_read": False,
    }


def trials_plot(record: dict[str, Any], path: Path) -> None:
    """Validation metric per trial, the best so far, and the `auto` trial marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in record["trials"] if t["value"] is not None]
    if not done:
        return
    xs = [t["number"] for t in done]
    ys = [t["value"] for t in done]
    better = max if record["mode"] == "max" else min
    best_so_far = [better(ys[: i + 1]) for i in range(len(ys))]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(xs, ys, "o", color="#3182bd", label="trial")
    ax.step(xs, best_so_far, where="post", color="#d94801", label="best so far")
    for t in done:
        if t["origin"] == "auto":
            ax.plot([t["number"]], [t["value"]], "*", ms=14, color="#31a354", label="auto settings")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {record['metric']}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
