"""The task contract, declared once: the required `Task` core and one small Protocol per
optional capability.

The run, evaluation and serving code never probe a task with `getattr`/`hasattr`: they ask
`capabilities(task)` once, which checks each capability Protocol here (`isinstance` on
`runtime_checkable` Protocols) and returns a typed `Capabilities` record. A task gains a
capability by implementing its members; nothing else has to be told.

A task never touches devices, precision or distribution (the loop owns those) and never
knows which model family it runs on beyond the `HeadSpec` it asks for. Adding a task is one
folder under `tasks/` that implements `Task` and calls `register_task` once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from finekit.core.registry import Registry

if TYPE_CHECKING:  # typing only: the recipe schema and the data room sit beside this layer
    import pandas as pd

    from finekit.data.splits import Splits
    from finekit.recipe import Recipe, TaskConfig


# --------------------------------------------------------------------------- data types
@dataclass
class HeadSpec:
    """What the model room must attach on top of the backbone for this task."""

    kind: str  # "sequence-classification", "causal-lm", "masked-lm", "image-classification"...
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    # transformers' `config.problem_type` for a sequence-classification head:
    # "single_label_classification", "multi_label_classification" or "regression"
    # (None: the library infers it from the labels' dtype).
    problem_type: str | None = None


@dataclass
class Prepared:
    """The task's view of the data after validation, label mapping and sampling."""

    splits: Splits
    info: dict[str, Any] = field(default_factory=dict)  # counts, labels... (goes to run.json)


class EncodedDataset(torch.utils.data.Dataset):
    """A map-style dataset of already-encoded examples, with lengths for length grouping."""

    def __init__(self, features: list[dict[str, Any]], lengths: Sequence[int] | None = None):
        self.features = features
        self.lengths = list(lengths) if lengths is not None else [1] * len(features)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


Batch = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- report data
# What a task says in the run's report, as data: `report/` renders it (HTML today), and no
# task imports `report/`.
@dataclass
class Text:
    """A paragraph; `tone`: plain, muted (a note), warn (a finding to act on), ok."""

    text: str
    tone: str = "plain"


@dataclass
class Heading:
    """A sub-heading inside a section."""

    text: str


@dataclass
class Table:
    """Rows of cells; a cell is a number, a text, or a list of texts (one per line).
    `left`: leading text columns; `text_columns`: other text columns by index."""

    header: list[str]
    rows: list[list[Any]]
    left: int = 1
    caption: str | None = None
    text_columns: tuple[int, ...] = ()


@dataclass
class Figure:
    """A PNG: rendered by the task (`png`) or a file in the run directory (`path`)."""

    caption: str
    png: bytes | None = None
    path: str | None = None


@dataclass
class Bullets:
    """A list of short items (e.g. skipped files)."""

    items: list[str]
    tone: str = "plain"


Block = Text | Heading | Table | Figure | Bullets


@dataclass
class ReportSection:
    """One titled section of a run's report."""

    title: str
    blocks: list[Block]


# --------------------------------------------------------------------------- the core
@runtime_checkable
class Task(Protocol):
    """What every task implements. `processor` is whatever the model family loaded
    (a tokenizer, an image processor, a feature extractor)."""

    name: str
    size_unit: str  # what `data.max_train_samples` and `finekit compare --sizes` count
    # The metrics `metrics()` returns that a run may select by (evaluation.metric), the
    # headline first; slices, guards and baselines report these.
    metric_names: tuple[str, ...]

    @property
    def config(self) -> TaskConfig: ...

    def prepare(self, splits: Splits, recipe: Recipe) -> Prepared:
        """Check columns/values, map labels, hold out and sample. Raise DataError early."""
        ...

    def head(self) -> HeadSpec:
        """The head the model room attaches (valid after `prepare`)."""
        ...

    def train_size(self, info: dict[str, Any]) -> int | None:
        """The training examples in `size_unit`s, read from `prepare`'s info or a run's
        `data` record; None while unknown (token blocks exist only after `encode`)."""
        ...

    def encode(self, df: pd.DataFrame, processor: Any, split: str) -> EncodedDataset:
        """Turn rows into model features (tokens, pixels...), counting truncation."""
        ...

    def collator(self, processor: Any) -> Callable[[list[dict[str, Any]]], Batch]:
        """Make padded tensors from a list of features (dynamic padding)."""
        ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The training loss of one batch (a scalar tensor)."""
        ...

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-example outputs of one batch (e.g. predictions, labels, probabilities)."""
        ...

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Metrics from the concatenated outputs of a whole split."""
        ...

    def artifacts(
        self,
        outputs: dict[str, torch.Tensor],
        out_dir: Path,
        split: str,
        rows: pd.DataFrame | None = None,
    ) -> list[str]:
        """Write plots/tables for a split (confusion matrix, per-example predictions of
        `rows`, the split's raw rows in order); return the file names."""
        ...

    def state(self) -> dict[str, Any]:
        """What inference needs to rebuild the task without training data (e.g. labels)."""
        ...

    def load_state(self, state: dict[str, Any]) -> None: ...

    def read_inputs(self, df: pd.DataFrame, source: str, with_labels: bool = False) -> pd.DataFrame:
        """Check an inference/eval file has the input columns (and, for evaluation,
        targets the trained model knows); return it."""
        ...

    def predict(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame, batch_size: int
    ) -> list[dict[str, Any]]:
        """Predictions for raw rows (inference, no labels needed)."""
        ...

    def encoding_record(self) -> dict[str, Any]:
        """What encoding counted per split (truncation, tokens, blocks...) for run.json's
        `data.truncation`; `{}` when there is nothing to say."""
        ...

    def forget_split(self, split: str) -> None:
        """Drop the encoding record of a throw-away split (slices re-encoded on their own)
        so run.json's counts stay those of the real splits."""
        ...


# --------------------------------------------------------------------------- capabilities
@runtime_checkable
class HasClasses(Protocol):
    """A classifier over named classes: `probs` over `labels` in its outputs. Its base
    model is scored by a linear probe on frozen features."""

    labels: list[str]


@runtime_checkable
class AttachesToModel(Protocol):
    """Needs a hook on the built model before training (e.g. text mixup at the head)."""

    def attach(self, model: nn.Module, head: list[str]) -> None: ...


@runtime_checkable
class HasBaseline(Protocol):
    """Scores the base model itself before any step (e.g. an LM's perplexity), merged into
    the final metrics as `<name>_before` beside `<name>_after`."""

    def baseline(
        self, model: nn.Module, processor: Any, encoded: dict[str, EncodedDataset], batch_size: int
    ) -> dict[str, dict[str, Any]]: ...


@runtime_checkable
class RetentionMeasure(Protocol):
    """A measure of the base model's general skill, scored before, during and after."""

    source: str
    texts: list[str]
    note: str | None
    before: dict[str, float]

    def score(self, model: nn.Module) -> dict[str, float]: ...

    def __call__(self, model: nn.Module) -> dict[str, float]: ...

    def summarize(self, after: dict[str, float]) -> dict[str, float]: ...


@runtime_checkable
class HasRetention(Protocol):
    """Brings its own retention measure (LMs: general-English perplexity) in place of the
    embedding geometry finekit measures for text encoders."""

    general_key: str  # the measure's name in validation rows and evaluation.metric

    def retention(
        self, model: nn.Module, processor: Any, recipe: Recipe
    ) -> RetentionMeasure | None: ...


@runtime_checkable
class HasFisherData(Protocol):
    """EWC's reference data is not the training set (LMs: general English)."""

    def fisher_data(self, processor: Any, recipe: Recipe) -> EncodedDataset: ...


@runtime_checkable
class ScoresGeneration(Protocol):
    """Evaluation also generates and scores replies (token F1, rule adherence...)."""

    def generation_metrics(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame
    ) -> dict[str, Any]: ...


@runtime_checkable
class Generates(Protocol):
    """Answers conversations (`finekit chat`, `finekit serve`)."""

    system_prompt: str | None  # the system turn a new conversation opens with

    def generate(
        self,
        model: nn.Module,
        processor: Any,
        conversations: list[list[dict[str, str]]],
        batch_size: int,
        streamer: Any = None,
    ) -> tuple[list[str], list[bool]]:
        """Greedy replies and whether each stopped by itself; `streamer` receives tokens."""
        ...


@runtime_checkable
class Explains(Protocol):
    """Writes explanations of predictions beside the evaluation artefacts (Grad-CAM...)."""

    def explain(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame, out_dir: Path, split: str
    ) -> list[str]: ...


@runtime_checkable
class HasReportSections(Protocol):
    """Adds its own sections to the run's report, as data (`report/` renders them)."""

    def report_sections(
        self, run_dir: Path, recipe: Recipe, run: dict[str, Any]
    ) -> list[ReportSection]: ...


@runtime_checkable
class ReadsFiles(Protocol):
    """Inputs that are not table cells (image files, folders, .npz): how an eval/predict
    file is read and which column bare values (`predict(["a.png"])`) go to."""

    input_column: str

    def read_file(self, path: str, hf_split: str | None) -> pd.DataFrame: ...


@runtime_checkable
class MeasuresInputs(Protocol):
    """Token-sequence inputs: the length of each example in tokens, untruncated, as the
    task will feed it to the model (special tokens, pairs, chat templates included). The
    `auto` rules size training.max_length by these."""

    def input_lengths(self, df: pd.DataFrame, processor: Any) -> list[int]: ...


@runtime_checkable
class MeasuresImages(Protocol):
    """Image inputs: the longer side of each prepared image in pixels (the `auto` rules
    choose the input resolution from them)."""

    def image_sides(self, df: pd.DataFrame) -> list[int]: ...


@dataclass(frozen=True)
class Capabilities:
    """Which optional capabilities a task has: each field is the task itself (typed as
    that capability) or None. Computed once per task by `capabilities()`."""

    classes: HasClasses | None
    attach: AttachesToModel | None
    baseline: HasBaseline | None
    retention: HasRetention | None
    fisher_data: HasFisherData | None
    generation_metrics: ScoresGeneration | None
    generate: Generates | None
    explain: Explains | None
    report_sections: HasReportSections | None
    files: ReadsFiles | None
    lengths: MeasuresInputs | None
    images: MeasuresImages | None


CAPABILITIES: dict[str, type] = {
    "classes": HasClasses,
    "attach": AttachesToModel,
    "baseline": HasBaseline,
    "retention": HasRetention,
    "fisher_data": HasFisherData,
    "generation_metrics": ScoresGeneration,
    "generate": Generates,
    "explain": Explains,
    "report_sections": HasReportSections,
    "files": ReadsFiles,
    "lengths": MeasuresInputs,
    "images": MeasuresImages,
}


def capabilities(task: Task) -> Capabilities:
    """The one place a task's optional capabilities are checked."""
    found: dict[str, Any] = {
        key: task if isinstance(task, proto) else None for key, proto in CAPABILITIES.items()
    }
    return Capabilities(**found)


def check_task(task: object, name: str) -> None:
    """A registered task must implement the whole core (a missing member is named here,
    when the task is built, not mid-run)."""
    if isinstance(task, Task):
        return
    from finekit.errors import RegistryError

    have = set(dir(task))
    core = [m for m in (*Task.__annotations__, *vars(Task)) if not m.startswith("_")]
    missing = sorted({m for m in core if m not in have})
    raise RegistryError(f"task {name!r} does not implement {', '.join(missing)}")


# --------------------------------------------------------------------------- registry
@dataclass
class TaskEntry:
    config_cls: type[TaskConfig]
    factory: Callable[[TaskConfig], Task]


TASKS: Registry[TaskEntry] = Registry("task")


def register_task(name: str, config_cls: type[TaskConfig], factory: Callable[..., Task]) -> None:
    """Make a task available to recipes as `task: {name: <name>, ...}`."""
    TASKS.register(name, TaskEntry(config_cls=config_cls, factory=factory))


@dataclass
class MethodEntry:
    """A method's recipe section class and its factory (the `Method` contract itself is in
    `finekit.methods.base`, beside the model room it acts on)."""

    config_cls: type[Any]
    factory: Callable[[Any], Any]


METHODS: Registry[MethodEntry] = Registry("method")


def build_task(config: TaskConfig) -> Task:
    """The registered task for a recipe's `task` section, checked against the core."""
    task = TASKS.get(config.name).factory(config)
    check_task(task, config.name)
    return task
