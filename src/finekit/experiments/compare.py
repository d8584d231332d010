"""`finekit compare`: the baseline ladder and learning curves.

The same recipe at each rung (scratch, linear-probe, lora, full, or the recipe's own
method) x each training size x each seed, on identical splits and evaluation. Every run is
a normal run directory; `compare.json` aggregates them. Rerunning skips finished runs and
resumes interrupted ones.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finekit.errors import DataError, RecipeError, RunDirError
from finekit.recipe import Recipe
from finekit.recipe.auto import auto_fields, concrete, get_field, with_fallbacks
from finekit.rundir import RECIPE, is_run_dir, read_json, recipe_diff, write_json

log = logging.getLogger(__name__)
COMPARE_JSON = "compare.json"
COMPARE_RECIPE = "compare-recipe.yaml"
PROBE_LR = 0.1  # the least rate for a new head on a (nearly) frozen body


@dataclass
class Rung:
    """How a rung changes the recipe, and why (declared in compare.json)."""

    method: dict[str, Any]
    note: str
    init: str = "pretrained"
    training: Callable[[Recipe], dict[str, Any]] = field(default=lambda r: {})
    # Settings the rung picks on the validation split, per cell: (label, training
    # overrides) candidates, each trained into its own run directory; fewer than two = none.
    tune: Callable[[Recipe], list[tuple[str, dict[str, Any]]]] = field(default=lambda r: [])


def _scratch_training(r: Recipe) -> dict[str, Any]:
    # Random init has no features to protect: a higher rate and more passes (Vaswani et
    # al.'s transformer rates are ~1e-4..1e-3 with warm-up); never fewer than the recipe's.
    # The head's rate is tuned per cell (`_scratch_head_grid`); by default it is the body's.
    return {
        "lr": max(r.training.lr, 3e-4),
        "head_lr": None,
        "epochs": r.training.epochs * 2,
        "warmup_ratio": max(r.training.warmup_ratio, 0.1),
    }


def _scratch_head_grid(r: Recipe) -> list[tuple[str, dict[str, Any]]]:
    # Which rate suits a new head on a random body depends on the data size: on Banking77
    # (seed 42, validation) the body's 3e-4 gave 0.699 at 10 per class and 0.724 at 32;
    # the recipe's head_lr 0.1 gave 0.646 and 0.810. One fixed choice would make scratch a
    # strawman at some size, so the rung trains both and keeps the one that validates best.
    lr = _scratch_training(r)["lr"]
    head = r.training.head_lr
    if not head or head <= lr:
        return []
    return [("head-at-body-lr", {"head_lr": None}), (f"head_lr-{head:g}", {"head_lr": head})]


def _fast_head_lr(r: Recipe) -> float:
    head = concrete(r.training.head_lr)
    return max(head or concrete(r.training.lr) * 10, PROBE_LR)


def _probe_training(r: Recipe) -> dict[str, Any]:
    # Only a linear head trains on fixed features: a convex problem that AdamW solves at a far
    # higher rate than a head trained together with its body. Measured on Banking77 (MiniLM's
    # head inputs, 4 epochs): lr 2e-3 (the recipe's head_lr) left the loss at 2.6 and 0.66 test
    # accuracy with all data, where a converged logistic regression on the same features
    # reaches 0.91; lr 1e-1 reaches 0.90 (1e-2: 0.86, 3e-2: 0.88). A probe held below its
    # optimum would be a strawman rung.
    return {"lr": _fast_head_lr(r), "head_lr": None}


def _lora_training(r: Recipe) -> dict[str, Any]:
    # Low-rank updates need a larger step than full fine-tuning (Hu et al. 2021: 5e-4..2e-3).
    # The new head rides on a body that barely moves, so it wants the probe's rate: at the
    # recipe's head_lr (2e-3) LoRA stayed at 0.65 on Banking77 at 32 per class, limited by
    # its head like the probe; with the head at 0.1 it reached 0.88 (0.02: 0.86).
    return {"lr": max(r.training.lr * 5, 5e-4), "head_lr": _fast_head_lr(r)}


RUNGS: dict[str, Rung] = {
    "scratch": Rung(
        {"name": "full"},
        "same architecture and tokenizer, random init; "
        "lr max(recipe, 3e-4), 2x epochs, warm-up >= 10%; the head's rate picked per "
        "cell on the validation split: the body's rate or the recipe's head_lr (both runs "
        "kept; `tuning` in the cell counts the cost of both)",
        "scratch",
        _scratch_training,
        _scratch_head_grid,
    ),
    "scratch-same": Rung(
        {"name": "full"},
        "random init like `scratch`, but the recipe's own rates and epochs: the same budget "
        "as the fine-tuned run (the question 'what did pre-training buy at equal compute?')",
        "scratch",
    ),
    "linear-probe": Rung(
        {"name": "linear_probe"},
        "backbone frozen, head only (a convex problem); lr max(the recipe's head_lr, 0.1)",
        training=_probe_training,
    ),
    "partial": Rung(
        {"name": "freeze", "layers_fraction": 0.5},
        "embeddings/stem and the lower half of the blocks frozen (frozen BatchNorm in eval "
        "mode); the recipe's rates",
    ),
    "lora": Rung(
        {"name": "lora"},
        "LoRA (peft defaults per architecture, r=8); lr max(5x recipe lr, 5e-4), "
        "head lr max(the recipe's head_lr, 0.1) like the probe",
        training=_lora_training,
    ),
    "full": Rung({"name": "full"}, "every parameter trains; the recipe's rates"),
}


def parse_sizes(text: str) -> list[int | str]:
    out: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if part == "full":
            out.append("full")
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise RecipeError(f"--sizes: {part!r} is neither a positive integer nor 'full'")
    return list(dict.fromkeys(out))  # "8,8" is one size, not two runs per seed


def parse_rungs(text: str, recipe: Recipe) -> list[str]:
    """The recipe's own method is always a rung ('recipe'), plus the named baselines."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    for n in names:
        if n not in RUNGS:
            raise RecipeError(f"--against: unknown rung {n!r}; known: {', '.join(RUNGS)}")
    # `full` on a full-fine-tuning recipe is the recipe itself: train it once.
    same = {"full"} if recipe.method.name == "full" else set()
    return list(dict.fromkeys(["recipe", *[n for n in names if n not in same]]))


def cell_epochs(recipe: Recipe, n_train: int, min_steps: int) -> float:
    """The recipe's epochs, raised so that small sizes still get `min_steps` optimizer
    steps (4 epochs of 80 examples would be ~10 steps: an untrained, not a fair, rung)."""
    per_step = concrete(recipe.training.batch_size) * recipe.training.grad_accum
    epochs = concrete(recipe.training.epochs, "training.epochs")
    if n_train <= 0 or min_steps <= 0:
        return epochs
    return max(epochs, math.ceil(min_steps * per_step / n_train))


def rung_recipe(
    recipe: Recipe,
    rung: str,
    size: int | str,
    seed: int,
    out: Path,
    classes: bool,
    n_train: int = 0,
    min_steps: int = 0,
    extra: dict[str, Any] | None = None,
) -> Recipe:
    """The recipe of one cell of the ladder (`extra`: one tuning candidate's training
    overrides)."""
    cell = _cell(recipe, rung, size, seed, out, classes)
    if auto_fields(cell):
        # Every rung gets the same budget (the epochs floor below) and the baselines are
        # defined relative to the recipe's numbers (scratch: 2x epochs, a higher rate...):
        # resolve them on this cell's data first. A baseline's numbers are a full
        # fine-tune's (a LoRA recipe's adapter rate would wreck a fully trained body).
        from finekit.run.stages import resolve_auto

        as_full = cell if rung == "recipe" else cell.with_overrides({"method": {"name": "full"}})
        numbers = resolve_auto(as_full).recipe
        cell = cell.with_overrides(
            {f: get_field(numbers, f) for f in auto_fields(cell) if f != "method"}
        )
    epochs = cell_epochs(cell, n_train, min_steps)
    upd0: dict[str, Any] = {"training.epochs": epochs}
    if epochs > 10 and n_train > 0:
        # Many short epochs: validate/checkpoint ~10 times per run, not every epoch.
        per_step = concrete(cell.training.batch_size) * cell.training.grad_accum
        steps = math.ceil(epochs * math.ceil(n_train / per_step))
        every = max(1, math.ceil(steps / 10))
        upd0.update(
            {
                "evaluation.every_steps": every,
                "training.checkpoint_every": every,
                "training.checkpoint_each_epoch": False,
            }
        )
    cell = cell.with_overrides(upd0)
    if rung == "recipe":
        return cell
    spec = RUNGS[rung]
    upd: dict[str, Any] = {"method": spec.method, "model.init": spec.init}
    for k, v in {**spec.training(cell), **(extra or {})}.items():
        upd[f"training.{k}"] = v
    return cell.with_overrides(upd)


def _cell(
    recipe: Recipe, rung: str, size: int | str, seed: int, out: Path, classes: bool
) -> Recipe:
    """The recipe at one size and seed, into `out`."""
    upd: dict[str, Any] = {
        "training.seed": seed,
        "output.dir": str(out),
        "output.overwrite": False,
        "name": f"{recipe.name}-{rung}-{size}-s{seed}",
    }
    if size != "full":
        upd["data.k_per_class" if classes else "data.max_train_samples"] = size
        if classes:  # classes smaller than the size keep all they have
            upd["data.k_per_class_cap"] = True
    else:
        upd["data.k_per_class"] = None
        upd["data.max_train_samples"] = None
    return recipe.with_overrides(upd)


def train_flops(total: int, trainable: int, tokens: int, method: str) -> float:
    """Training FLOPs estimate from the 6*N*T rule (Kaplan et al. 2020) split into forward
    (2NT), activation gradients (2NT, skipped when nothing below the head trains) and
    weight gradients (2 * trainable * T)."""
    backprop_body = method not in ("linear_probe",)
    return float(tokens) * (2 * total + (2 * total if backprop_body else 0) + 2 * trainable)


def run_flops(train: dict[str, Any], method: str) -> tuple[float, str]:
    """A run's training FLOPs and the rule used: 6·N·T on tokens for token models; the
    measured forward pass (run.json `forward_flops_per_example`) times the examples seen
    where there are no tokens (images, audio); 6·N per example for older runs without a
    count (a floor: it ignores resolution)."""
    from finekit.train.flops import training_flops

    total, trainable = train["total_parameters"], train["trainable_parameters"]
    if train.get("tokens_seen"):
        return train_flops(total, trainable, train["tokens_seen"], method), "6NT tokens"
    seen = train.get("samples_seen", 0)
    if fwd := train.get("forward_flops_per_example"):
        return training_flops(fwd, seen, trainable, total, method), "measured forward"
    return train_flops(total, trainable, seen, method), "6N per example (floor)"


def check_sizes(
    recipe: Recipe, sizes: list[int | str], seeds: list[int]
) -> tuple[bool, dict[str, int], int | None]:
    """Fail before any training when a size exceeds what the data holds, under every
    seed's hold-out (each seed draws its own validation split). Returns whether sizes
    count per class, the class counts and the training size (None while unknown: a
    language corpus is counted in token blocks only once tokenized)."""
    from finekit.data.splits import read_splits
    from finekit.tasks import build_task

    base = recipe.with_overrides({"data.k_per_class": None, "data.max_train_samples": None})
    largest_size = max((s for s in sizes if isinstance(s, int)), default=0)
    classes, counts, total, unit = False, {}, None, ""
    for i, seed in enumerate(seeds):
        if i and not largest_size:
            break
        task = build_task(with_fallbacks(recipe).task)
        prepared = task.prepare(
            read_splits(base.data), with_fallbacks(base.with_overrides({"training.seed": seed}))
        )
        unit = task.size_unit
        counts_s: dict[str, int] = prepared.info.get("train_class_counts", {})
        total_s = task.train_size(prepared.info)
        if i == 0:
            classes, counts, total = bool(counts_s), counts_s, total_s
        if counts_s:
            largest = max(counts_s, key=lambda k: counts_s[k])
            if largest_size > counts_s[largest]:
                raise DataError(
                    f"--sizes {largest_size}: larger than the largest class in "
                    f"{recipe.data.train} ({counts_s[largest]} training examples of "
                    f"{largest!r} after seed {seed}'s validation hold-out); largest "
                    f"possible: {counts_s[largest]}"
                )
        elif total_s is not None and largest_size > total_s:
            raise DataError(
                f"--sizes {largest_size}: larger than the training set of "
                f"{recipe.data.train} ({total_s} {unit} after seed {seed}'s hold-out)"
            )
    if not classes and total is None and largest_size:
        log.info(
            "sizes count %s, known once tokenized: a size above the corpus's keeps all "
            "its blocks (each cell's real count is in compare.json)",
            unit,
        )
    return classes, counts, total


def compare(
    recipe: Recipe,
    against: str,
    sizes: str,
    seeds: int,
    output: str | Path,
    echo: Callable[[str], Any] = print,
    min_steps: int = 300,
) -> dict[str, Any]:
    """Run (or finish) the ladder; write compare.json, learning curves and the report.
    Small sizes train for at least `min_steps` optimizer steps (epochs raised)."""
    if seeds < 1:
        raise RecipeError("--seeds must be >= 1")
    out = Path(output)
    rungs = parse_rungs(against, recipe)
    size_list = parse_sizes(sizes)
    stored = out / COMPARE_RECIPE
    if out.exists() and any(out.iterdir()):
        if not stored.is_file():
            raise RunDirError(
                f"compare directory {out} exists and is not a finekit compare; "
                "choose another --output"
            )
        diff = recipe_diff(Recipe.from_yaml(stored), recipe)
        if diff:
            raise RunDirError(
                f"compare directory {out} was made by another recipe (differs in "
                f"{', '.join(diff)}); use another --output"
            )
    seed_list = [recipe.training.seed + i for i in range(seeds)]
    classes, counts, total_train = check_sizes(recipe, size_list, seed_list)
    # The rungs' own tuning grids (scratch's head rates) start from the recipe's numbers.
    numbers = recipe
    if auto_fields(recipe):
        from finekit.run.stages import resolve_auto

        numbers = resolve_auto(recipe.with_overrides({"method": {"name": "full"}})).recipe
    out.mkdir(parents=True, exist_ok=True)
    recipe.to_yaml(stored)
    method_name = recipe.method.name
    cells = [(r, s, sd) for s in size_list for sd in seed_list for r in rungs]
    runs: list[dict[str, Any]] = []
    for i, (rung, size, seed) in enumerate(cells, 1):
        run_dir = out / "runs" / rung / str(size) / f"seed-{seed}"
        n_train = (
            sum(min(size, c) for c in counts.values())
            if classes and isinstance(size, int)
            else size
            if isinstance(size, int)
            else total_train or 0
        )
        tag = f"[{i}/{len(cells)}] {rung:<13} size={size!s:<5} seed={seed}"
        grid = RUNGS[rung].tune(numbers) if rung in RUNGS else []
        tries = []
        for label, extra in grid if len(grid) > 1 else [("", {})]:
            d = run_dir / label if label else run_dir
            r = rung_recipe(recipe, rung, size, seed, d, classes, n_train, min_steps, extra)
            tries.append((label, d, run_or_skip(r, d, f"{tag} {label}".rstrip(), echo)))
        label, chosen, run = pick_on_validation(tries, recipe)
        entry = {
            "rung": rung,
            "size": size,
            "seed": seed,
            "run_dir": str(chosen.relative_to(out)),
            "run": run,
        }
        if len(tries) > 1:
            entry["tuning"] = {
                "chosen": label,
                "tries": {
                    lb: {
                        "validation": validation_score(run_, recipe.evaluation.metric),
                        "train_seconds": run_["train"]["seconds"],
                        "train_flops": run_flops(run_["train"], run_.get("method", ""))[0],
                    }
                    for lb, _, run_ in tries
                },
            }
        runs.append(entry)
    result = aggregate(recipe, rungs, size_list, seed_list, runs, classes, counts, method_name)
    result["min_steps"] = min_steps
    write_json(out / COMPARE_JSON, result)
    from finekit.report.compare import compare_report

    compare_report(out)
    return result


def pick_on_validation(
    tries: list[tuple[str, Path, dict[str, Any]]], recipe: Recipe
) -> tuple[str, Path, dict[str, Any]]:
    """The try whose validation metric is best (the first on ties or where none has one);
    the test split is never looked at."""
    metric, higher = recipe.evaluation.metric, recipe.evaluation.resolved_mode() == "max"

    def key(t: tuple[str, Path, dict[str, Any]]) -> float:
        v = validation_score(t[2], metric)
        if v is None or math.isnan(v):
            return -math.inf
        return v if higher else -v

    return max(tries, key=key)  # max() keeps the first of equal keys


def validation_score(run: dict[str, Any], metric: str) -> float | None:
    """A run.json's validation value of `metric` (None where it has none)."""
    v = run.get("metrics", {}).get("validation", {}).get(metric)
    return None if v is None else float(v)


def run_or_skip(r: Recipe, run_dir: Path, tag: str, echo: Callable[[str], Any]) -> dict[str, Any]:
    """Train `r` into `run_dir` unless a completed run is there (an interrupted one
    resumes); its run.json."""
    from finekit.run import finetune

    if is_run_dir(run_dir) and (run_dir / RECIPE).is_file():
        diff = recipe_diff(Recipe.from_yaml(run_dir / RECIPE), r)
        if diff:  # e.g. another --min-steps: the cell's epochs changed since it ran
            raise RunDirError(
                f"{run_dir} was trained with another recipe for this cell (differs in "
                f"{', '.join(diff)}): the compare's options changed since (--min-steps?); "
                "rerun with the same options, or use another --output"
            )
    done = is_run_dir(run_dir) and read_json(run_dir / "run.json").get("status") == "completed"
    if done:
        echo(f"{tag}: done before, skipped")
    else:
        resume = is_run_dir(run_dir)
        echo(f"{tag}: {'resuming' if resume else 'training'} ...")
        t0 = time.perf_counter()
        finetune(r, resume=resume)
        echo(f"{tag}: {time.perf_counter() - t0:.0f} s")
    return read_json(run_dir / "run.json")


def spread(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1; 0 for a single value) and the values. A
    run that could not measure the metric (None: e.g. ROC-AUC on a one-class split) is
    kept in `values` and counted in `missing` (present only then), not averaged; all
    missing gives None."""
    known = [float(v) for v in values if v is not None and not math.isnan(v)]
    out: dict[str, Any] = {
        "mean": statistics.fmean(known) if known else None,
        "std": (statistics.stdev(known) if len(known) > 1 else 0.0) if known else None,
        "values": values,
    }
    if len(known) < len(values):
        out["missing"] = len(values) - len(known)
    return out


def aggregate(
    recipe: Recipe,
    rungs: list[str],
    sizes: list[int | str],
    seeds: list[int],
    runs: list[dict[str, Any]],
    classes: bool,
    counts: dict[str, int],
    method_name: str,
) -> dict[str, Any]:
    from finekit.tasks import build_task

    task = build_task(with_fallbacks(recipe).task)
    metric = recipe.evaluation.metric
    split = "test" if all("test" in x["run"].get("metrics", {}) for x in runs) else "validation"
    cells = []
    for rung in rungs:
        for size in sizes:
            group = [x for x in runs if x["rung"] == rung and x["size"] == size]
            vals = [x["run"]["metrics"][split].get(metric) for x in group]
            trains = [x["run"]["train"] for x in group]
            meth = group[0]["run"].get("method", method_name) if group else ""
            priced = [run_flops(t, meth) for t in trains]
            flops = [f for f, _ in priced]
            cells.append(
                {
                    "rung": rung,
                    "method": meth,
                    "size": size,
                    **spread(vals),
                    "seeds": [x["seed"] for x in group],
                    "train_examples": statistics.fmean(
                        task.train_size(x["run"].get("data", {})) or 0 for x in group
                    ),
                    "train_seconds": statistics.fmean(t["seconds"] for t in trains),
                    "wall_seconds": statistics.fmean(
                        x["run"].get("wall_seconds", 0) for x in group
                    ),
                    "trainable_parameters": trains[0]["trainable_parameters"],
                    "epochs": trains[0].get("epochs"),
                    "train_flops": statistics.fmean(flops),
                    "flops_rule": priced[0][1],
                    "runs": [x["run_dir"] for x in group],
                    **tuning_summary(group),
                }
            )
    higher = recipe.evaluation.resolved_mode() == "max"
    return {
        "recipe": recipe.name,
        "metric": metric,
        "higher_is_better": higher,
        "split": split,
        "size_unit": "examples per class" if classes else task.size_unit,
        "sizes": sizes,
        "seeds": seeds,
        "rungs": {
            r: {
                "method": method_name if r == "recipe" else RUNGS[r].method["name"],
                "note": "the recipe as written" if r == "recipe" else RUNGS[r].note,
            }
            for r in rungs
        },
        "smallest_class": min(counts.values()) if counts else None,
        "epochs": {f"{c['rung']}/{c['size']}": c["epochs"] for c in cells},
        "cells": cells,
        "gains": gains(runs, rungs, sizes, split, metric, higher),
    }


def tuning_summary(group: list[dict[str, Any]]) -> dict[str, Any]:
    """For a tuned cell: the candidate each seed chose on validation, and the mean cost of
    all candidates together (the price of tuning, next to the chosen run's own)."""
    tuned = [x["tuning"] for x in group if "tuning" in x]
    if not tuned:
        return {}
    return {
        "tuning": {
            "by": "validation",
            "chosen": [t["chosen"] for t in tuned],
            "tries": [t["tries"] for t in tuned],
            "train_seconds_all_tries": statistics.fmean(
                sum(v["train_seconds"] for v in t["tries"].values()) for t in tuned
            ),
            "train_flops_all_tries": statistics.fmean(
                sum(v["train_flops"] for v in t["tries"].values()) for t in tuned
            ),
        }
    }


def gains(
    runs: list[dict[str, Any]],
    rungs: list[str],
    sizes: list[int | str],
    split: str,
    metric: str,
    higher: bool,
) -> list[dict[str, Any]]:
    """The recipe's advantage over every other rung at every size, paired by seed (the
    same seed draws the same examples, split and head for both): per-seed differences in
    the metric's own units, signed so that > 0 means the recipe is better. Seeds where
    either run has no value are left out of the pair list."""
    value = {
        (x["rung"], x["size"], x["seed"]): v
        for x in runs
        if (v := x["run"]["metrics"][split].get(metric)) is not None and not math.isnan(v)
    }
    out = []
    for rung in rungs:
        if rung == "recipe":
            continue
        for size in sizes:
            seeds = [
                sd
                for (r, s, sd) in value
                if r == "recipe" and s == size and (rung, size, sd) in value
            ]
            if not seeds:
                continue
            sign = 1.0 if higher else -1.0
            diffs = [sign * (value["recipe", size, sd] - value[rung, size, sd]) for sd in seeds]
            out.append(
                {
                    "against": rung,
                    "size": size,
                    **spread(diffs),
                    "seeds": seeds,
                    "recipe_better_in": sum(d > 0 for d in diffs),
                }
            )
    return out
