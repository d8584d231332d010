"""The stages of one run, in the order `finetune()` calls them. Each takes the recipe and
what earlier stages returned, and returns a typed value; none reads another's internals.

Optional task capabilities (a base-model baseline, its own retention measure, EWC data, a
hook on the built model) come from `capabilities(task)`, checked once in `setup`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from finekit.core.contracts import (
    Capabilities,
    EncodedDataset,
    Prepared,
    RetentionMeasure,
    Task,
    build_task,
    capabilities,
)
from finekit.data.splits import read_splits
from finekit.errors import RecipeError
from finekit.evaluate.base_model import LinearProbe, base_view, has_probe, score_rows
from finekit.evaluate.exported import LoadedRun, load_run
from finekit.evaluate.guards import guard_alarms, read_eval_sets
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
from finekit.models import family_for
from finekit.models.base import LayerGroups, LoadedModel, ModelFamily
from finekit.recipe import RETENTION_METRICS, Recipe, auto
from finekit.recipe.auto import DataFacts, Resolution, concrete
from finekit.run.records import ModelRecord, RetentionRecord, RunRecord, TrainRecord
from finekit.rundir import RUN_JSON, TASK_JSON, read_json, write_json
from finekit.train.flops import forward_flops_per_example
from finekit.train.loop import Loop, TrainSummary, detect_device_type, make_accelerator
from finekit.train.monitors import EarlyStopping, OverfitMonitor
from finekit.train.precision import resolve_precision
from finekit.train.regularisers import EWC, L2SP
from finekit.train.replay import ReplayMix, read_replay

log = logging.getLogger("finekit")


# --------------------------------------------------------------------------- setup
@dataclass
class Setup:
    """Everything built from the recipe before the run directory exists."""

    task: Task
    caps: Capabilities
    prepared: Prepared
    family: ModelFamily
    loaded: LoadedModel
    groups: LayerGroups
    method: Method
    model: nn.Module
    recipe: Recipe  # with every `auto` field resolved
    auto: Resolution  # what `auto` chose, and why
    replay: Any = None  # data.replay rows (a DataFrame), read and checked by the task
    # evaluation.edge_cases / evaluation.guard rows by split name, checked by the task
    eval_sets: dict[str, Any] = field(default_factory=dict)
    # run.json's `auto` when it is not this setup's: a resumed run keeps its first record
    # (its stored recipe is already resolved, so nothing is `auto` the second time).
    auto_json: dict[str, Any] | None = None


def setup(r: Recipe) -> Setup:
    """data -> task -> model -> `auto` settings -> method, with every input check; writes
    nothing. The returned Setup holds the resolved recipe the later stages use."""
    # Built and prepared first with the fixed defaults: the `auto` rules need the data.
    provisional = auto.with_fallbacks(r)
    task = build_task(provisional.task)
    caps = capabilities(task)
    raw = read_splits(r.data)
    # A retention measure as evaluation.metric is checked against the model below; the
    # task checks (and keeps for slices and guards) its own headline metric.
    by_retention = r.evaluation.metric in RETENTION_METRICS
    own = task.metric_names[0]

    def as_task(x: Recipe) -> Recipe:
        return x.with_overrides({"evaluation.metric": own}) if by_retention else x

    prepared = task.prepare(raw, as_task(provisional))
    check_slices(r, prepared, raw)
    replay = read_replay(r.data, task) if r.data.replay is not None else None
    eval_sets = read_eval_sets(r, task)  # edge cases and guard sets: bad files fail here
    family = family_for(r.model)
    resolve_precision(r.training.precision, detect_device_type())
    if r.evaluation.retention != "off":
        reference_sentences(r.evaluation.retention_reference)  # a bad file fails here
    set_seed(r.training.seed)  # the new head's (or a scratch model's) initialisation
    loaded = family.load(r.model, task.head(), pretrained=r.model.init == "pretrained")
    resolution = auto.resolve(r, data_facts(r, caps, prepared, loaded))
    r = resolution.recipe
    if resolution.chosen:  # the task keeps what it reads of the recipe (max_length...)
        task = build_task(r.task)
        caps = capabilities(task)
        prepared = task.prepare(raw, as_task(r))
    check_max_length(loaded.model, concrete(r.training.max_length, "training.max_length"))
    for name, length in r.task.length_fields().items():
        check_max_length(loaded.model, length, field=name)
    if by_retention:
        check_retention_metric(r, task, caps, loaded)
    groups = family.layer_groups(loaded.model)
    method = build_method(r.method)
    for message in r.method.advice(r):
        log.warning("%s", message)
    model_type = getattr(getattr(loaded.model, "config", None), "model_type", None)
    model = method.apply(loaded.model, MethodContext(groups, task.head(), model_type))
    if r.training.frozen_bn == "eval":
        freeze_batchnorm_stats(model)
    return Setup(
        task,
        caps,
        prepared,
        family,
        loaded,
        groups,
        method,
        model,
        r,
        resolution,
        replay,
        eval_sets,
    )


def resolve_auto(r: Recipe) -> Resolution:
    """What `auto` chooses for this recipe on its data, without training: the data read and
    prepared, the model loaded (for its size and limits). The compare ladder and
    --auto-tune use it before their runs; a run (and `finekit check`) resolves inside
    `setup`, which keeps these intermediate objects."""
    provisional = auto.with_fallbacks(r)
    task = build_task(provisional.task)
    caps = capabilities(task)
    raw = read_splits(r.data)
    own = task.metric_names[0]
    if r.evaluation.metric in RETENTION_METRICS:
        provisional = provisional.with_overrides({"evaluation.metric": own})
    prepared = task.prepare(raw, provisional)
    set_seed(r.training.seed)
    loaded = family_for(r.model).load(r.model, task.head(), pretrained=r.model.init == "pretrained")
    return auto.resolve(r, data_facts(r, caps, prepared, loaded))


def data_facts(r: Recipe, caps: Capabilities, prepared: Prepared, loaded: LoadedModel) -> DataFacts:
    """What the `auto` rules look at: the prepared splits, the task's token lengths and
    the loaded model."""
    train, val = prepared.splits.train, prepared.splits.validation
    lengths = None
    if caps.lengths is not None:
        lengths = caps.lengths.input_lengths(train, loaded.processor)
    config = getattr(loaded.model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    sides = caps.images.image_sides(train) if caps.images is not None else None
    return DataFacts(
        image_sides=sides,
        n_train=len(train),
        n_validation=0 if val is None else len(val),
        n_classes=len(caps.classes.labels) if caps.classes is not None else None,
        lengths=lengths,
        parameters=sum(p.numel() for p in loaded.model.parameters()),
        batchnorm=any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in loaded.model.modules()
        ),
        max_positions=positions if isinstance(positions, int) else None,
    )


def retention_measures(
    r: Recipe, caps: Capabilities, model: nn.Module, processor: Any, source: str | None = None
) -> list[str]:
    """The retention measures this run will log per validation (see `retention`)."""
    if r.evaluation.retention == "off" or r.model.init != "pretrained":
        return []
    if caps.retention is not None:
        return [caps.retention.general_key]
    if is_text_encoder(model, processor):
        with_mlm = _mlm_head(r, source) is not None
        return ["retention_similarity", "retention_cosine"] + (
            [MaskedLMHead.PPL] if with_mlm else []
        )
    return []


def is_text_encoder(model: nn.Module, processor: Any) -> bool:
    """A tokenizer-fed model with an encoder body: its embedding geometry can be kept."""
    return hasattr(processor, "pad_token") and encoder_of(model) is not None


def check_retention_metric(r: Recipe, task: Task, caps: Capabilities, loaded: LoadedModel) -> None:
    """`evaluation.metric` names a retention measure: the run must have that one."""
    have = retention_measures(r, caps, loaded.model, loaded.processor, loaded.source)
    if r.evaluation.metric not in have:
        why = (
            "model.init is scratch (no base skill to retain)"
            if r.model.init != "pretrained"
            else f"this run measures {', '.join(have)}"
            if have
            else f"task {task.name!r} with this model has no retention measure"
        )
        raise RecipeError(
            f"evaluation.metric={r.evaluation.metric!r}: {why}; allowed: "
            f"{', '.join([*task.metric_names, *have])}"
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


# --------------------------------------------------------------------------- encode
@dataclass
class Encoded:
    """The splits as model features, and what trains."""

    splits: dict[str, EncodedDataset]  # train, validation, test
    extra: dict[str, EncodedDataset]  # evaluation.edge_cases / guard sets
    train: Any  # the training set, mixed with replay rows where asked
    train_eval: EncodedDataset | None  # a fixed subset for the train/validation gap
    trainable: int
    total: int

    def held_out(self) -> dict[str, EncodedDataset]:
        """Every evaluated set (all but train), user sets included."""
        return {**{s: e for s, e in self.splits.items() if s != "train"}, **self.extra}


def encode(r: Recipe, s: Setup) -> Encoded:
    """Tokens/pixels for every split; the replay pool mixed into training."""
    # Exported tokenizers truncate like training did (plain transformers == finekit predict).
    if hasattr(s.loaded.processor, "model_max_length"):
        s.loaded.processor.model_max_length = r.training.max_length
    proc = s.loaded.processor
    splits = {
        name: s.task.encode(df, proc, name)
        for name, df in s.prepared.splits.items()
        if name != "test" or r.evaluation.score_test
    }
    trainable, total = count_parameters(s.model)
    log.info(
        "%s: %s trainable of %s parameters (%.2f%%)",
        r.method.name,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(1, total),
    )
    train: Any = splits["train"]
    if s.replay is not None and r.data.replay is not None:
        pool = s.task.encode(s.replay, proc, "replay")
        train = ReplayMix(train, pool, r.data.replay.ratio)
    # User-given sets (evaluation.edge_cases, evaluation.guard): evaluated like splits.
    extra = {name: s.task.encode(df, proc, name) for name, df in s.eval_sets.items()}
    train_eval = subset(splits["train"], r.evaluation.train_eval_samples, r.training.seed)
    return Encoded(splits, extra, train, train_eval, trainable, total)


# --------------------------------------------------------------------------- engine
@dataclass
class Engine:
    """What drives the loop besides the model: the accelerator, the regularisers toward
    the base weights, early stopping and the overfitting monitor."""

    accelerator: Accelerator
    regularisers: list[Any]
    stopper: EarlyStopping
    monitor: OverfitMonitor | None
    restore_best: bool


def engine(r: Recipe, s: Setup, data: Encoded) -> Engine:
    """The accelerator and everything anchored to the *base* weights (before any step)."""
    ev = r.evaluation
    patience = concrete(ev.patience, "evaluation.patience")
    restore_best = ev.restore_best if ev.restore_best is not None else patience is not None
    mode = ev.resolved_mode()
    stopper = EarlyStopping(ev.metric, mode, patience, ev.min_delta, keep_best=restore_best)
    monitor = OverfitMonitor(ev.metric, mode) if ev.overfit_alarm else None
    if s.caps.attach is not None:  # e.g. text mixup's head modules
        s.caps.attach.attach(s.model, s.groups.head)
    regularisers: list[Any] = [L2SP(s.model, r.training.l2sp, s.groups)] if r.training.l2sp else []
    accelerator = make_accelerator(r.training)
    if r.training.ewc:  # the base model's Fisher, on the training device, before any step
        s.model.to(accelerator.device)
        regularisers.append(ewc(r, r.training.ewc, s, data.splits["train"]))
    s.model.to(accelerator.device)
    return Engine(accelerator, regularisers, stopper, monitor, restore_best)


def ewc(r: Recipe, alpha: float, s: Setup, train: Any) -> EWC:
    """EWC toward the base weights, its Fisher from `training.ewc_batches` batches of the
    task's own reference data where it has one (e.g. general English for causal LMs),
    else of a seeded subset of the training data."""
    proc = s.loaded.processor
    own = s.caps.fisher_data
    data, source = (
        (own.fisher_data(proc, r), f"{s.task.name}.fisher_data")
        if own
        else (
            train,
            "train",
        )
    )
    bs = concrete(r.training.batch_size, "training.batch_size")
    n = r.training.ewc_batches * bs
    ref = subset(data, n, r.training.seed)
    ref = data if ref is None else ref
    collate = s.task.collator(proc)
    batches = (
        collate([ref[j] for j in range(i, min(i + bs, len(ref)))]) for i in range(0, len(ref), bs)
    )
    return EWC(s.model, alpha, s.groups, s.task.loss, batches, source)


# --------------------------------------------------------------------------- baselines
@dataclass
class Baselines:
    """The base model's numbers before any step, to set beside the tuned model's."""

    before: dict[str, dict[str, Any]]  # split -> `<metric>_before` (+ what scored it)
    slices: dict[str, dict[str, Any]]  # split -> the base model's per-slice metrics
    probe: LinearProbe | None  # classifiers: the linear probe standing in for the base
    retention: RetentionMeasure | EmbeddingRetention | None


def baselines(r: Recipe, s: Setup, data: Encoded, eng: Engine) -> Baselines:
    """Task baseline (e.g. perplexity), linear probe, base slices and retention reference."""
    proc, bs = s.loaded.processor, r.training.eval_batch_size
    before: dict[str, dict[str, Any]] = {}
    if s.caps.baseline is not None:
        with base_view(s.model):  # e.g. prompt tuning's virtual tokens are not the base
            before = s.caps.baseline.baseline(s.model, proc, data.held_out(), bs)
    rows = {**{n: df for n, df in s.prepared.splits.items() if n in data.splits}, **s.eval_sets}
    rows.pop("train", None)
    base_slices, probe = base_model_scores(r, s, data, rows)
    if probe is not None:  # classifiers: the linear probe's numbers as "before"
        for name, encoded in data.held_out().items():
            m = s.task.metrics(probe.outputs(encoded))
            before[name] = {
                "baseline": probe.kind,
                **{f"{k}_before": m[k] for k in s.task.metric_names if k in m},
            }
    return Baselines(before, base_slices, probe, retention(r, s))


def base_model_scores(
    r: Recipe, s: Setup, data: Encoded, rows_by_split: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], LinearProbe | None]:
    """Before any step: the base model's per-slice metrics on each evaluated split
    ({split: slices}) and, for classifiers, the linear probe that stands in for the base
    (also wanted by guard sets). LM tasks are scored zero-shot, slice by slice."""
    ev, task, model, proc = r.evaluation, s.task, s.model, s.loaded.processor
    want_slices = bool(ev.slices) and ev.slice_base
    if not want_slices and not data.extra:
        return {}, None
    probe = None
    collate, bs = task.collator(proc), r.training.eval_batch_size
    if has_probe(task) and s.groups.head:
        try:
            probe = LinearProbe(
                task, model, s.groups.head, data.splits["train"], collate, bs, r.training.seed
            )
        except (ValueError, AttributeError) as e:  # e.g. one class only in training
            log.warning("linear probe of the base model not fitted: %s", e)
    if not want_slices:
        return {}, probe
    metric, higher = task_metric(ev, task)
    encoded = data.held_out()
    out = {}
    for split, rows in rows_by_split.items():
        cols = [c for c in ev.slices if c in rows.columns]
        if not cols:
            continue
        rescore: Any = None
        outputs: dict[str, Any] = {}
        if probe is not None:
            outputs = probe.outputs(encoded[split])
        elif s.caps.baseline is not None:

            def rescore(sub: Any) -> dict[str, Any]:
                with base_view(model):
                    return score_rows(task, model, proc, sub, bs, "base_slice")

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


def retention(r: Recipe, s: Setup) -> RetentionMeasure | EmbeddingRetention | None:
    """Reference scores of the *base* model (before any step), where they mean something:
    the task's own measure (e.g. general-text perplexity for language models), or for a
    pre-trained text encoder its embedding geometry (plus pseudo-perplexity under the
    checkpoint's masked-LM head, where it ships one)."""
    if r.evaluation.retention == "off" or r.model.init != "pretrained":
        return None
    model, proc = s.model, s.loaded.processor
    if s.caps.retention is not None:
        return s.caps.retention.retention(model, proc, r)
    if not is_text_encoder(model, proc):
        return None
    try:
        return EmbeddingRetention(
            model,
            proc,
            concrete(r.training.max_length, "training.max_length"),
            r.evaluation.retention_reference,
            mlm_head=_mlm_head(r, s.loaded.source),
        )
    except (ValueError, TypeError, AttributeError) as e:
        log.info("retention not measured for this model: %s", e)
        return None


def _mlm_head(r: Recipe, source: str | None) -> MaskedLMHead | None:
    if not r.evaluation.retention_mlm or source is None:
        return None
    return MaskedLMHead.from_checkpoint(source)


# --------------------------------------------------------------------------- fit
@dataclass
class Fit:
    """The trained model and what the loop reported."""

    loop: Loop
    summary: TrainSummary
    best: dict[str, Any] | None  # the restored best evaluation, if any
    retention: RetentionMeasure | EmbeddingRetention | None
    forward_flops: float | None


def fit(
    r: Recipe,
    s: Setup,
    data: Encoded,
    eng: Engine,
    base: Baselines,
    run_dir: Path,
    resume: bool,
    callbacks: list[Any],
    started: float,
) -> Fit:
    """The loop (resumed from the newest checkpoint where asked); best weights restored."""
    collate = s.task.collator(s.loaded.processor)
    # Counted on a held-out split: reading training examples would draw augmentations.
    splits = data.splits
    plain = next((splits[n] for n in ("validation", "test") if n in splits), splits["train"])
    fwd_flops = forward_flops_per_example(s.task, s.model, plain, collate)
    builtins = [eng.stopper, *([eng.monitor] if eng.monitor else [])]
    loop = Loop(
        s.task,
        s.model,
        s.groups,
        data.train,
        splits.get("validation"),
        collate,
        r.training,
        r.evaluation,
        run_dir,
        callbacks=s.method.callbacks(s.model) + builtins + callbacks,
        save_checkpoints=r.output.save_checkpoints,
        accelerator=eng.accelerator,
        train_eval_data=data.train_eval,
        regularisers=eng.regularisers,
        evaluators=[base.retention] if base.retention else [],
        started=started,
    )
    need = s.method.schedule_steps(loop.steps_per_epoch)
    if need > loop.total_steps:
        log.warning(
            "method %s: the unfreezing schedule needs %d steps but training has %d; the "
            "lowest blocks will never train (unfreeze more often or train longer)",
            r.method.name,
            need,
            loop.total_steps,
        )
    if resume and loop.resume() is None:
        log.warning("no complete checkpoint in %s: starting from the beginning", run_dir)
    summary = loop.fit()
    best = loop.restore_best() if eng.restore_best else None
    if best is not None:
        log.info(
            "restored the best weights (step %s, %s %.4f)",
            best.get("step"),
            r.evaluation.metric,
            best.get(r.evaluation.metric, float("nan")),
        )
    eng.accelerator.wait_for_everyone()
    return Fit(loop, summary, best, base.retention, fwd_flops)


# --------------------------------------------------------------------------- export
@dataclass
class Exported:
    """The exported model, loaded back as `finekit eval`/`predict` see it."""

    run: LoadedRun
    artifacts: dict[str, Any]
    model: ModelRecord


def export(r: Recipe, s: Setup, done: Fit, run_dir: Path) -> Exported:
    """model/ (and adapter/), task.json; then the export loaded back (main process)."""
    acc = done.loop.acc
    unwrapped = acc.unwrap_model(done.loop.model, keep_fp32_wrapper=False)
    artifacts = dict(
        s.method.export(
            unwrapped,
            s.family,
            s.loaded.processor,
            s.task.head(),
            run_dir,
            r.output.keep_adapter,
        )
    )
    write_json(run_dir / TASK_JSON, s.task.state())
    model = ModelRecord(
        path=r.model.path,
        source=s.loaded.source,
        family=s.family.name,
        init=r.model.init,
        reinitialised=s.loaded.reinitialised,
        dropped=s.loaded.dropped,
    )
    run = read_json(run_dir / RUN_JSON)
    run["model"] = model.to_json()
    write_json(run_dir / RUN_JSON, run)
    return Exported(load_run(run_dir, device=str(acc.device)), artifacts, model)


# --------------------------------------------------------------------------- evaluate
def evaluate(
    r: Recipe, s: Setup, base: Baselines, exported: Exported, run_dir: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Final metrics of the *exported* model on every held-out split and user set, with
    the base model's numbers beside them; returns (metrics, artifact files)."""
    ev = r.evaluation
    metric, higher = task_metric(ev, s.task)
    sources = {**s.prepared.splits.sources, **eval_set_sources(r)}
    metrics: dict[str, dict[str, Any]] = {}
    files: dict[str, Any] = {}
    for split, df in [*s.prepared.splits.items(), *s.eval_sets.items()]:
        if split == "train" or (split == "test" and not ev.score_test):
            continue
        m = exported.run.evaluate(
            df, sources.get(split, split), run_dir / "eval", split, require_slices=False
        )
        m.pop("confusion_matrix", None)
        for k, v in base.before.get(split, {}).items():
            m[k] = v
            if k.endswith("_before") and k[: -len("_before")] in m:
                m[k[: -len("_before")] + "_after"] = m[k[: -len("_before")]]
        if m.get("slices") and split in base.slices:
            m["slices"] = compare_slices(
                m["slices"],
                base.slices[split],
                metric,
                higher,
                ev.slice_min_examples,
                ev.slice_gap_alarm,
                "linear_probe" if base.probe is not None else "zero_shot",
            )
        metrics[split] = m
        files[f"eval_{split}"] = f"eval/{split}.json"
    return metrics, files


def eval_set_sources(r: Recipe) -> dict[str, str]:
    out = {"edge_cases": r.evaluation.edge_cases} if r.evaluation.edge_cases else {}
    return {**out, **{g.name: g.path for g in r.evaluation.guard}}


# --------------------------------------------------------------------------- record
def record(
    r: Recipe,
    s: Setup,
    data: Encoded,
    eng: Engine,
    done: Fit,
    metrics: dict[str, dict[str, Any]],
    files: dict[str, Any],
    exported: Exported,
    started: float,
) -> RunRecord:
    """run.json's final record, from the stages' typed results."""
    ev, sm = r.evaluation, done.summary
    metric, higher = task_metric(ev, s.task)
    this_attempt = time.time() - started  # read once: both wall times agree
    return RunRecord(
        task=r.task.name,
        method=r.method.name,
        metrics=metrics,
        auto=s.auto_json or s.auto.to_json(),
        train=TrainRecord(
            seconds=round(sm.seconds, 2),
            samples_per_second=round(sm.samples_per_second, 2),
            tokens_per_second=round(sm.tokens_per_second, 1),
            trainable_parameters=data.trainable,
            total_parameters=data.total,
            steps=sm.steps,
            epochs=round(sm.epochs, 3),
            samples_seen=sm.samples_seen,
            forward_flops_per_example=done.forward_flops,
            tokens_seen=sm.tokens_seen,
            precision=sm.precision,
            device=sm.device,
            num_processes=sm.num_processes,
            resumed_from=sm.resumed_from,
        ),
        data={
            **s.prepared.info,
            "truncation": s.task.encoding_record(),
            **(
                {"replay": data.train.summary(rd.path, rd.ratio, sm.epochs)}
                if isinstance(data.train, ReplayMix) and (rd := r.data.replay)
                else {}
            ),
        },
        retention=retention_record(done, exported),
        early_stopping=eng.stopper.summary(),
        regularisers={
            reg.name: {"alpha": reg.alpha, "distance_to_base": reg.distance(), **reg.info}
            for reg in eng.regularisers
        },
        restored_best=done.best,
        overfitting=eng.monitor.summary() if eng.monitor else None,
        alarms=alarms(r, eng, metrics, metric, higher),
        artifacts={**exported.artifacts, **files},
        # All attempts (a resumed run counts its earlier ones to their checkpoint).
        wall_seconds=round(this_attempt + sm.wall_seconds_before, 2),
        wall_seconds_this_attempt=round(this_attempt, 2),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )


def retention_record(done: Fit, exported: Exported) -> RetentionRecord | None:
    """The exported model (fp32, merged) against the base model's reference scores."""
    measure = done.retention
    if measure is None:
        return None
    after = measure.score(exported.run.model)
    return RetentionRecord(
        reference=measure.source,
        sentences=len(measure.texts),
        before=measure.before,
        after=after,
        per_evaluation=[
            {"step": h["step"], **{k: h[k] for k in after if k in h}} for h in done.summary.history
        ],
        extra=measure.summarize(after),
        note=measure.note,
    )


def alarms(
    r: Recipe, eng: Engine, metrics: dict[str, dict[str, Any]], metric: str, higher: bool
) -> list[str]:
    """Overfitting, slice gaps (and gaps wider than the base model's), guard regressions."""
    ev = r.evaluation
    out: list[str] = []
    if eng.monitor and eng.monitor.summary()["detected"]:
        out.append(eng.monitor.summary()["message"])
    for split, m in metrics.items():
        sl = m.get("slices") or {}
        out += slice_alarms(sl, metric, split, ev.slice_gap_alarm)
        out += widened_alarms(sl, metric, split, ev.slice_gap_alarm)
    names = [g.name for g in ev.guard]
    tol, rel = ev.guard_tolerance, ev.guard_tolerance_relative
    return out + guard_alarms(metrics, names, metric, higher, tol, rel)


def write_record(run_dir: Path, rec: RunRecord) -> None:
    """run.json completed, then the HTML report (a report failure never loses the run)."""
    run = read_json(run_dir / RUN_JSON)
    run.update(rec.to_json())
    write_json(run_dir / RUN_JSON, run)
    from finekit.report import write_report  # the report renders the run; nothing imports back

    try:
        write_report(run_dir)
    except Exception as e:  # the run is complete; the report can be rebuilt later
        log.warning(
            "report not written (%s: %s); retry with `finekit report %s`",
            type(e).__name__,
            e,
            run_dir,
        )


def read_run(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / RUN_JSON)


# --------------------------------------------------------------------------- helpers
def subset(data: EncodedDataset, n: int, seed: int) -> EncodedDataset | None:
    """A fixed, seeded subset of the training data for the train/validation gap (the
    plain `features`: never augmented)."""
    if n <= 0 or len(data) == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:n].sort().values.tolist()
    rows = [data.features[i] for i in idx]
    return EncodedDataset(rows, [data.lengths[i] for i in idx])


def log_to(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("finekit")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return handler
