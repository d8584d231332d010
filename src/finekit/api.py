"""`finetune(recipe)`: the one-way flow recipe -> data -> model -> method -> loop ->
evaluation -> export, each arrow a plain call with typed values."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import nn

from finekit.data.splits import read_splits
from finekit.errors import RecipeError
from finekit.evaluate.base_model import LinearProbe, base_view, has_probe, score_rows
from finekit.evaluate.guards import guard_alarms, read_eval_sets
from finekit.evaluate.metrics import headline
from finekit.evaluate.retention import (
    EmbeddingRetention,
    MaskedLMHead,
    encoder_of,
    reference_sentences,
)
from finekit.evaluate.slices import (
    check_slice_columns,
    compare_slices,
    slice_alarms,
    slice_metrics,
    task_metric,
    widened_alarms,
)
from finekit.methods import MethodContext, build_method, count_parameters
from finekit.methods.base import Method, freeze_batchnorm_stats
from finekit.methods.regularisers import EWC, L2SP
from finekit.methods.replay import ReplayMix, read_replay
from finekit.models import family_for
from finekit.models.base import LayerGroups, LoadedModel, ModelFamily
from finekit.recipe import RETENTION_METRICS, Recipe, deep_merge
from finekit.rundir import (
    RUN_JSON,
    TASK_JSON,
    check_run_dir,
    create_run_dir,
    mark_failed,
    read_json,
    write_json,
)
from finekit.tasks import EncodedDataset, build_task
from finekit.tasks.base import Prepared, Task
from finekit.train.distributed import process_state
from finekit.train.flops import forward_flops_per_example
from finekit.train.loop import Loop, detect_device_type, make_accelerator
from finekit.train.monitors import EarlyStopping, OverfitMonitor
from finekit.train.precision import resolve_precision

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
    return Recipe.from_dict(deep_merge(base, sections), source="finetune()")


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
    started = time.time()
    state = process_state()  # accelerate's process info (rank, world size); no device work
    # 1. Everything that can be wrong with the input fails here, before anything is written.
    run_dir = check_run_dir(r, resume, main_process=state.is_main_process)
    setup = _setup(r)
    # 2. Only now the run directory is made (by one process; the others wait for it).
    if state.is_main_process and not resume:
        create_run_dir(r, run_dir)
    state.wait_for_everyone()
    handler = _log_to(run_dir / "train.log") if state.is_main_process else None
    try:
        return _run(r, run_dir, resume, callbacks or [], started, setup)
    except BaseException as e:
        if state.is_main_process:
            mark_failed(run_dir, e)
        raise
    finally:
        if handler is not None:
            logging.getLogger("finekit").removeHandler(handler)
            handler.close()


@dataclass
class _Setup:
    """Everything built from the recipe before the run directory exists."""

    task: Task
    prepared: Prepared
    family: ModelFamily
    loaded: LoadedModel
    groups: LayerGroups
    method: Method
    model: nn.Module
    replay: Any = None  # data.replay rows (a DataFrame), read and checked by the task
    # evaluation.edge_cases / evaluation.guard rows by split name, checked by the task
    eval_sets: dict[str, Any] = field(default_factory=dict)


def _setup(r: Recipe) -> _Setup:
    """data -> task -> model -> method, with every input check; writes nothing."""
    task = build_task(r.task)
    raw = read_splits(r.data)
    # A retention measure as evaluation.metric is checked against the model below; the
    # task checks (and keeps for slices and guards) its own headline metric.
    by_retention = r.evaluation.metric in RETENTION_METRICS
    own = getattr(task, "metric_names", ("accuracy",))[0]
    as_task = r.with_overrides({"evaluation.metric": own}) if by_retention else r
    prepared = task.prepare(raw, as_task)
    check_slices(r, prepared, raw)
    replay = read_replay(r.data, task) if r.data.replay is not None else None
    eval_sets = read_eval_sets(r, task)  # edge cases and guard sets: bad files fail here
    family = family_for(r.model)
    resolve_precision(r.training.precision, detect_device_type())
    if r.evaluation.retention != "off":
        reference_sentences(r.evaluation.retention_reference)  # a bad file fails here
    set_seed(r.training.seed)  # the new head's (or a scratch model's) initialisation
    loaded = family.load(r.model, task.head(), pretrained=r.model.init == "pretrained")
    check_max_length(loaded.model, r.training.max_length)
    block = getattr(r.task, "block_size", None)  # LM tasks: tokens per block
    if block is not None:
        check_max_length(loaded.model, block, field="task.block_size")
    if by_retention:
        check_retention_metric(r, task, loaded)
    groups = family.layer_groups(loaded.model)
    method = build_method(r.method)
    if r.method.name == "prompt_tuning" and r.training.lr < 1e-3:
        # Soft prompts learn at 1e-2..3e-1 (Lester et al. 2021); at encoder rates they barely move.
        log.warning(
            "method prompt_tuning with training.lr=%g: soft prompts need ~1e-2 to 3e-1; "
            "set training.lr",
            r.training.lr,
        )
    model_type = getattr(getattr(loaded.model, "config", None), "model_type", None)
    model = method.apply(loaded.model, MethodContext(groups, task.head(), model_type))
    if r.training.frozen_bn == "eval":
        freeze_batchnorm_stats(model)
    return _Setup(task, prepared, family, loaded, groups, method, model, replay, eval_sets)


def retention_measures(
    r: Recipe, task: Task, model: nn.Module, processor: Any, source: str | None = None
) -> list[str]:
    """The retention measures this run will log per validation (see `_retention`)."""
    if r.evaluation.retention == "off" or r.model.init != "pretrained":
        return []
    if getattr(task, "retention", None) is not None:
        return [getattr(task, "general_key", "general_perplexity")]
    if hasattr(processor, "pad_token") and encoder_of(model) is not None:
        with_mlm = _mlm_head(r, source) is not None
        return ["retention_similarity", "retention_cosine"] + (
            [MaskedLMHead.PPL] if with_mlm else []
        )
    return []


def check_retention_metric(r: Recipe, task: Task, loaded: LoadedModel) -> None:
    """`evaluation.metric` names a retention measure: the run must have that one."""
    have = retention_measures(r, task, loaded.model, loaded.processor, loaded.source)
    if r.evaluation.metric not in have:
        why = (
            "model.init is scratch (no base skill to retain)"
            if r.model.init != "pretrained"
            else f"this run measures {', '.join(have)}"
            if have
            else f"task {task.name!r} with this model has no retention measure"
        )
        own = ", ".join(getattr(task, "metric_names", ()))
        raise RecipeError(
            f"evaluation.metric={r.evaluation.metric!r}: {why}; allowed: "
            f"{', '.join([*getattr(task, 'metric_names', ()), *have]) or own}"
        )


def check_slices(r: Recipe, prepared: Prepared, raw: Any = None) -> None:
    """Each `evaluation.slices` column must be in some evaluated split (e.g. the test
    file); a validation part held out of a training file without it is evaluated whole.
    A task that does not keep other columns with its examples (chat's conversations)
    cannot be sliced: a RecipeError."""
    evaluated = [(s, df) for s, df in prepared.splits.items() if s != "train"]
    for col in r.evaluation.slices:
        in_raw = raw is not None and any(col in df.columns for _, df in raw.items())
        if in_raw and not any(col in df.columns for _, df in prepared.splits.items()):
            raise RecipeError(
                f"evaluation.slices: task {r.task.name!r} does not keep column {col!r} with "
                "its examples, so its metrics cannot be sliced by it; remove evaluation.slices"
            )
        if evaluated and not any(col in df.columns for _, df in evaluated):
            s, df = evaluated[-1]
            check_slice_columns(df, [col], prepared.splits.sources.get(s, s))


def check_max_length(model: Any, max_length: int, field: str = "training.max_length") -> None:
    """Position embeddings bound the input length: say so before an IndexError mid-run."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise RecipeError(
            f"{field}={max_length} exceeds the model's max_position_embeddings "
            f"({limit}); allowed: 8..{limit}"
        )


def _run(
    r: Recipe, run_dir: Path, resume: bool, callbacks: list[Any], started: float, setup: _Setup
) -> FinetuneResult:
    task, prepared, family, loaded = setup.task, setup.prepared, setup.family, setup.loaded
    groups, method, model = setup.groups, setup.method, setup.model
    # Exported tokenizers truncate like training did (plain transformers == finekit predict).
    if hasattr(loaded.processor, "model_max_length"):
        loaded.processor.model_max_length = r.training.max_length
    splits = prepared.splits
    encoded = {name: task.encode(df, loaded.processor, name) for name, df in splits.items()}
    trainable, total = count_parameters(model)
    log.info(
        "%s: %s trainable of %s parameters (%.2f%%)",
        r.method.name,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(1, total),
    )

    train_eval = _subset(encoded["train"], r.evaluation.train_eval_samples, r.training.seed)
    ev = r.evaluation
    mode = ev.resolved_mode()
    slice_metric, higher = task_metric(ev, task)  # slices and guards: the task's own metric
    restore_best = ev.restore_best if ev.restore_best is not None else ev.patience is not None
    stopper = EarlyStopping(ev.metric, mode, ev.patience, ev.min_delta, keep_best=restore_best)
    monitor = OverfitMonitor(ev.metric, mode) if ev.overfit_alarm else None
    builtins: list[Any] = [stopper, *([monitor] if monitor else [])]
    method_callbacks = method.callbacks(model) if hasattr(method, "callbacks") else []
    attach = getattr(task, "attach", None)  # optional: e.g. text mixup's head modules
    if attach is not None:
        attach(model, groups.head)
    regularisers: list[Any] = [L2SP(model, r.training.l2sp, groups)] if r.training.l2sp else []
    accelerator = make_accelerator(r.training)
    if r.training.ewc:  # the base model's Fisher, on the training device, before any step
        model.to(accelerator.device)
        ewc = _ewc(r, r.training.ewc, task, model, groups, loaded.processor, encoded["train"])
        regularisers.append(ewc)
    train_data = encoded["train"]
    if setup.replay is not None and r.data.replay is not None:
        pool = task.encode(setup.replay, loaded.processor, "replay")
        train_data = ReplayMix(train_data, pool, r.data.replay.ratio)
    # User-given sets (evaluation.edge_cases, evaluation.guard): evaluated like splits.
    extra = {name: task.encode(df, loaded.processor, name) for name, df in setup.eval_sets.items()}
    # Optional task hook: the base model's scores before any step (e.g. perplexity), merged
    # into the final metrics as `<name>_before` beside `<name>_after`.
    baseline_hook = getattr(task, "baseline", None)
    before: dict[str, dict[str, Any]] = {}
    if baseline_hook is not None:
        model.to(accelerator.device)  # prepare() would move it anyway
        with base_view(model):  # e.g. prompt tuning's virtual tokens are not the base
            before = baseline_hook(
                model,
                loaded.processor,
                {**{s: e for s, e in encoded.items() if s != "train"}, **extra},
                r.training.eval_batch_size,
            )
    model.to(accelerator.device)
    base_slices, probe = _base_model_scores(
        r,
        task,
        model,
        groups,
        loaded.processor,
        encoded,
        {**{s: df for s, df in splits.items() if s != "train"}, **setup.eval_sets},
        extra,
    )
    if probe is not None:  # classifiers: the linear probe's numbers as "before"
        for name, data in {**{s: e for s, e in encoded.items() if s != "train"}, **extra}.items():
            m = task.metrics(probe.outputs(data))
            before[name] = {
                "baseline": probe.kind,
                **{f"{k}_before": m[k] for k in getattr(task, "metric_names", ()) if k in m},
            }
    retention = _retention(r, model, loaded.processor, task, loaded.source)
    # Counted on a held-out split: reading training examples would draw augmentations.
    plain = next((encoded[s] for s in ("validation", "test") if s in encoded), encoded["train"])
    fwd_flops = forward_flops_per_example(task, model, plain, task.collator(loaded.processor))
    loop = Loop(
        task,
        model,
        groups,
        train_data,
        encoded.get("validation"),
        task.collator(loaded.processor),
        r.training,
        r.evaluation,
        run_dir,
        callbacks=method_callbacks + builtins + callbacks,
        save_checkpoints=r.output.save_checkpoints,
        accelerator=accelerator,
        train_eval_data=train_eval,
        regularisers=regularisers,
        evaluators=[retention] if retention else [],
        started=started,
    )
    if (
        hasattr(method, "schedule_steps")
        and method.schedule_steps(loop.steps_per_epoch) > loop.total_steps
    ):
        log.warning(
            "method %s: the unfreezing schedule needs %d steps but training has %d; the "
            "lowest blocks will never train (unfreeze more often or train longer)",
            r.method.name,
            method.schedule_steps(loop.steps_per_epoch),
            loop.total_steps,
        )
    if resume and loop.resume() is None:
        log.warning("no complete checkpoint in %s: starting from the beginning", run_dir)
    summary = loop.fit()
    best = loop.restore_best() if restore_best else None
    if best is not None:
        log.info(
            "restored the best weights (step %s, %s %.4f)",
            best.get("step"),
            ev.metric,
            best.get(ev.metric, float("nan")),
        )

    accelerator.wait_for_everyone()
    artifacts: dict[str, Any] = {}
    metrics: dict[str, dict[str, Any]] = {}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(loop.model, keep_fp32_wrapper=False)
        artifacts.update(
            method.export(
                unwrapped, family, loaded.processor, task.head(), run_dir, r.output.keep_adapter
            )
        )
        write_json(run_dir / TASK_JSON, task.state())
        run = read_json(run_dir / RUN_JSON)
        run["model"] = {
            "path": r.model.path,
            "source": loaded.source,
            "family": family.name,
            "init": r.model.init,
        }
        write_json(run_dir / RUN_JSON, run)
        # Final metrics come from the exported model, as `finekit eval`/`predict` see it.
        from finekit.serve.predict import load_run

        exported = load_run(run_dir, device=str(accelerator.device))
        sources = {**prepared.splits.sources, **_eval_set_sources(r)}
        for split, df in [*splits.items(), *setup.eval_sets.items()]:
            if split == "train":
                continue
            m = exported.evaluate(
                df,
                sources.get(split, split),
                out_dir=run_dir / "eval",
                split=split,
                require_slices=False,
            )
            m.pop("confusion_matrix", None)
            for k, v in before.get(split, {}).items():
                m[k] = v
                if k.endswith("_before") and k[: -len("_before")] in m:
                    m[k[: -len("_before")] + "_after"] = m[k[: -len("_before")]]
            if m.get("slices") and split in base_slices:
                m["slices"] = compare_slices(
                    m["slices"],
                    base_slices[split],
                    slice_metric,
                    higher,
                    ev.slice_min_examples,
                    ev.slice_gap_alarm,
                    "linear_probe" if probe is not None else "zero_shot",
                )
            metrics[split] = m
            artifacts[f"eval_{split}"] = f"eval/{split}.json"
        retention_summary = None
        if retention is not None:
            # The exported model (fp32, merged) against the base model's reference embeddings.
            after = retention.score(exported.model)
            retention_summary = {
                "reference": retention.source,
                "sentences": len(retention.texts),
                "before": getattr(
                    retention, "before", {"retention_similarity": 1.0, "retention_cosine": 1.0}
                ),
                "after": after,
                "per_evaluation": [
                    {"step": h["step"], **{k: h[k] for k in after if k in h}}
                    for h in summary.history
                ],
            }
            if hasattr(retention, "summarize"):  # e.g. general_perplexity_before/after
                retention_summary.update(retention.summarize(after))
            if hasattr(retention, "note"):
                retention_summary["note"] = retention.note
        this_attempt = time.time() - started  # read once: both wall times agree
        run.update(
            {
                "status": "completed",
                "task": r.task.name,
                "method": r.method.name,
                "metrics": metrics,
                "train": {
                    "seconds": round(summary.seconds, 2),
                    "samples_per_second": round(summary.samples_per_second, 2),
                    "tokens_per_second": round(summary.tokens_per_second, 1),
                    "trainable_parameters": trainable,
                    "total_parameters": total,
                    "steps": summary.steps,
                    "epochs": round(summary.epochs, 3),
                    "samples_seen": summary.samples_seen,
                    "forward_flops_per_example": fwd_flops,
                    "tokens_seen": summary.tokens_seen,
                    "precision": summary.precision,
                    "device": summary.device,
                    "num_processes": summary.num_processes,
                    "resumed_from": summary.resumed_from,
                },
                "data": {
                    **prepared.info,
                    "truncation": getattr(task, "truncation", {}),
                    **(
                        {"replay": train_data.summary(rd.path, rd.ratio, summary.epochs)}
                        if isinstance(train_data, ReplayMix) and (rd := r.data.replay)
                        else {}
                    ),
                },
                "retention": retention_summary,
                "early_stopping": stopper.summary(),
                "regularisers": {
                    reg.name: {
                        "alpha": reg.alpha,
                        "distance_to_base": reg.distance(),
                        **getattr(reg, "info", {}),
                    }
                    for reg in regularisers
                },
                "restored_best": best,
                "overfitting": monitor.summary() if monitor else None,
                "alarms": (
                    [monitor.summary()["message"]]
                    if monitor and monitor.summary()["detected"]
                    else []
                )
                + [
                    msg
                    for split, m in metrics.items()
                    for msg in slice_alarms(
                        m.get("slices") or {}, slice_metric, split, ev.slice_gap_alarm
                    )
                    + widened_alarms(m.get("slices") or {}, slice_metric, split, ev.slice_gap_alarm)
                ]
                + guard_alarms(
                    metrics,
                    [g.name for g in ev.guard],
                    slice_metric,
                    higher,
                    ev.guard_tolerance,
                    ev.guard_tolerance_relative,
                ),
                "artifacts": artifacts,
                # All attempts (a resumed run counts its earlier ones to their checkpoint).
                "wall_seconds": round(this_attempt + summary.wall_seconds_before, 2),
                "wall_seconds_this_attempt": round(this_attempt, 2),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        )
        write_json(run_dir / RUN_JSON, run)
        _write_report(run_dir)
    accelerator.wait_for_everyone()
    run = read_json(run_dir / RUN_JSON)
    return FinetuneResult(
        run_dir=run_dir,
        model_dir=run_dir / "model",
        metrics=run.get("metrics", {}),
        train=run.get("train", {}),
        summary=run,
    )


def _eval_set_sources(r: Recipe) -> dict[str, str]:
    out = {"edge_cases": r.evaluation.edge_cases} if r.evaluation.edge_cases else {}
    return {**out, **{g.name: g.path for g in r.evaluation.guard}}


def _base_model_scores(
    r: Recipe,
    task: Task,
    model: nn.Module,
    groups: LayerGroups,
    processor: Any,
    encoded: dict[str, Any],
    rows_by_split: dict[str, Any],
    extra: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], LinearProbe | None]:
    """Before any step: the base model's per-slice metrics on each evaluated split
    ({split: slices}) and, for classifiers, the linear probe that stands in for the base
    (also wanted by guard sets). LM tasks are scored zero-shot, slice by slice."""
    ev = r.evaluation
    want_slices = bool(ev.slices) and ev.slice_base
    if not want_slices and not extra:
        return {}, None
    probe = None
    collate, bs = task.collator(processor), r.training.eval_batch_size
    if has_probe(task) and groups.head:
        try:
            probe = LinearProbe(
                task, model, groups.head, encoded["train"], collate, bs, r.training.seed
            )
        except (ValueError, AttributeError) as e:  # e.g. one class only in training
            log.warning("linear probe of the base model not fitted: %s", e)
    if not want_slices:
        return {}, probe
    metric, higher = task_metric(ev, task)
    out = {}
    for split, rows in rows_by_split.items():
        cols = [c for c in ev.slices if c in rows.columns]
        if not cols:
            continue
        rescore: Any = None
        outputs: dict[str, Any] = {}
        if probe is not None:
            outputs = probe.outputs(encoded[split] if split in encoded else extra[split])
        elif getattr(task, "baseline", None) is not None:

            def rescore(sub: Any) -> dict[str, Any]:
                with base_view(model):
                    return score_rows(task, model, processor, sub, bs, "base_slice")

            outputs = {}
        else:
            continue
        out[split] = slice_metrics(
            task,
            outputs,
            rows,
            cols,
            metric,
            higher,
            ev.slice_min_examples,
            ev.slice_gap_alarm,
            rescore=rescore,
        )
    return out, probe


def _write_report(run_dir: Path) -> None:
    """The HTML report; a failure here never loses a finished run (it is logged)."""
    from finekit.report import write_report

    try:
        write_report(run_dir)
    except Exception as e:  # the run is complete; the report can be rebuilt later
        log.warning(
            "report not written (%s: %s); retry with `finekit report %s`",
            type(e).__name__,
            e,
            run_dir,
        )


def _retention(
    r: Recipe,
    model: nn.Module,
    processor: Any,
    task: Task | None = None,
    source: str | None = None,
) -> Any:
    """Reference embeddings of the *base* model (before any step), where they mean
    something: a pre-trained text encoder (plus pseudo-perplexity under the checkpoint's
    masked-LM head at `source`, where it ships one); or the task's own measure
    (`task.retention`, e.g. general-text perplexity for language models)."""
    if r.evaluation.retention == "off" or r.model.init != "pretrained":
        return None
    hook = getattr(task, "retention", None)
    if hook is not None:
        return hook(model, processor, r)
    if not hasattr(processor, "pad_token") or encoder_of(model) is None:
        return None
    head = _mlm_head(r, source)
    try:
        return EmbeddingRetention(
            model,
            processor,
            r.training.max_length,
            r.evaluation.retention_reference,
            mlm_head=head,
        )
    except (ValueError, TypeError, AttributeError) as e:
        log.info("retention not measured for this model: %s", e)
        return None


def _mlm_head(r: Recipe, source: str | None) -> MaskedLMHead | None:
    if not r.evaluation.retention_mlm or source is None:
        return None
    return MaskedLMHead.from_checkpoint(source)


def _ewc(
    r: Recipe,
    alpha: float,
    task: Task,
    model: nn.Module,
    groups: LayerGroups,
    processor: Any,
    train: Any,
) -> EWC:
    """EWC toward the base weights, its Fisher from `training.ewc_batches` batches of the
    task's `fisher_data(processor, recipe)` if it has that hook (e.g. general English for
    causal LMs), else of a seeded subset of the training data."""
    hook = getattr(task, "fisher_data", None)
    data, source = (hook(processor, r), f"{task.name}.fisher_data") if hook else (train, "train")
    n = r.training.ewc_batches * r.training.batch_size
    ref = _subset(data, n, r.training.seed)
    ref = data if ref is None else ref
    collate, bs = task.collator(processor), r.training.batch_size
    batches = (
        collate([ref[j] for j in range(i, min(i + bs, len(ref)))]) for i in range(0, len(ref), bs)
    )
    return EWC(model, alpha, groups, task.loss, batches, source)


def _subset(data: EncodedDataset, n: int, seed: int) -> EncodedDataset | None:
    """A fixed, seeded subset of the training data for the train/validation gap (the
    plain `features`: never augmented)."""
    if n <= 0 or len(data) == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:n].sort().values.tolist()
    plain = getattr(data, "features", None)
    rows = [plain[i] if plain is not None else data[i] for i in idx]
    return EncodedDataset(rows, [data.lengths[i] for i in idx])


def _log_to(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("finekit")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return handler
