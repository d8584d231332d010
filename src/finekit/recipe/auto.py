"""`auto` settings: defaults derived from the data, the model and the task (`training.auto`).

A recipe field whose value is `auto` (the default of the fields in `AUTO_FIELDS`) is chosen
per run from what the run will train on: the number of training examples, the classes, the
token lengths of the training inputs and the model's size. Each task declares its rules in
its config's `auto_defaults` (with the source of each: a paper, an anchor library, or a
measurement recorded in `benchmarks/`); the shared schedules below are what most tasks use.
A field the user sets is kept, and where the rule would have chosen differently that is
reported as *overridden* (never silently replaced). `training.auto: false` puts every `auto`
field at the fixed library default in `FALLBACK` (the HF Trainer's and BERT's values).

The resolved values and their reasons go to run.json (`auto`) and are logged once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from finekit.errors import RecipeError

if TYPE_CHECKING:
    from finekit.recipe.schema import Recipe

Auto = Literal["auto"]
AUTO: Auto = "auto"

# Every field `auto` can fill, with its fixed default (`training.auto: false`, or a task
# without a rule for it): the values of the HF Trainer and of BERT's fine-tuning recipe.
T = TypeVar("T")


def concrete(value: T | Auto, name: str = "field") -> T:
    """A field's value once `auto` is resolved (the run's stages resolve it in `setup`)."""
    if isinstance(value, str) and value == AUTO:
        raise RecipeError(
            f"{name} is still `auto`: resolve the recipe against its data first "
            "(finekit.run.stages.setup or `finekit check`)"
        )
    return value  # type: ignore[return-value]


FALLBACK: dict[str, Any] = {
    "training.batch_size": 32,
    "training.epochs": 3.0,
    "training.lr": 5e-5,
    "training.head_lr": None,  # the head trains at training.lr
    "training.warmup_ratio": 0.1,
    "training.max_length": 128,
    "training.checkpoint_each_epoch": True,
    "training.checkpoint_every": None,
    "evaluation.every_steps": None,  # every epoch
    "evaluation.patience": None,  # no early stopping
}
AUTO_FIELDS = tuple(FALLBACK)


def fallbacks(recipe: Recipe) -> dict[str, Any]:
    """Every field `auto` can fill in this recipe: the shared ones and the task's own
    (`TaskConfig.auto_fields`, e.g. task.image_size), with their fixed defaults."""
    return {**FALLBACK, **{f"task.{k}": v for k, v in recipe.task.auto_fields.items()}}


@dataclass(frozen=True)
class DataFacts:
    """What the rules may look at: measured on the prepared training data and the model."""

    n_train: int  # training examples after sampling (k_per_class, max_train_samples)
    n_validation: int  # 0 = no validation split
    n_classes: int | None = None  # tasks with classes
    # Tokens per training example, untruncated (None: not text, e.g. images).
    lengths: list[int] | None = None
    parameters: int = 0  # of the loaded model, before the method freezes any
    batchnorm: bool = False  # the model normalises with BatchNorm (CNNs)
    max_positions: int | None = None  # the model's longest input, where it has one
    image_sides: list[int] | None = None  # images: the longer side of each, in pixels

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_train": self.n_train,
            "n_validation": self.n_validation,
            "n_classes": self.n_classes,
            "parameters": self.parameters,
            "batchnorm": self.batchnorm,
            "max_positions": self.max_positions,
        }
        if self.image_sides:
            out["image_side_median"] = sorted(self.image_sides)[len(self.image_sides) // 2]
        if self.lengths:
            s = sorted(self.lengths)
            out["length_p50"] = s[len(s) // 2]
            out["length_p99"] = s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]
            out["length_max"] = s[-1]
        return out


@dataclass(frozen=True)
class Choice:
    value: Any
    reason: str
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason, "source": self.source}


def get_field(recipe: Recipe, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(recipe, section), name)


@dataclass
class Proposals:
    """What a task's rules propose, field by field. `propose` returns the value later rules
    should build on: the user's where they set the field, else the proposal (or the fixed
    default where `training.auto` is off)."""

    recipe: Recipe
    facts: DataFacts
    choices: dict[str, Choice] = field(default_factory=dict)

    def propose(self, dotted: str, value: Any, reason: str, source: str) -> Any:
        self.choices[dotted] = Choice(value, reason, source)
        return self.effective(dotted)

    def effective(self, dotted: str) -> Any:
        current = get_field(self.recipe, dotted)
        if current != AUTO:
            return current
        fixed = fallbacks(self.recipe)[dotted]
        if not self.recipe.training.auto:
            return fixed
        chosen = self.choices.get(dotted)
        return chosen.value if chosen is not None else fixed


@dataclass
class Resolution:
    """The recipe with every `auto` field filled, and why each value was chosen."""

    recipe: Recipe
    chosen: dict[str, Choice]  # fields that were `auto`
    overridden: dict[str, dict[str, Any]]  # fields the user set where auto differs
    facts: DataFacts

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.recipe.training.auto,
            "chosen": {k: c.to_json() for k, c in self.chosen.items()},
            "overridden": self.overridden,
            "facts": self.facts.summary(),
        }

    def lines(self) -> list[str]:
        """One line per choice, for the log and `finekit check`."""
        out = [
            f"{k} = {_fmt(c.value)}  ({c.reason}; source: {c.source})"
            for k, c in self.chosen.items()
        ]
        out += [
            f"{k} = {_fmt(o['yours'])}  (yours; auto would choose {_fmt(o['auto'])}: {o['reason']})"
            for k, o in self.overridden.items()
        ]
        return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "none" if v is None else str(v)


def setting(recipe: Recipe, dotted: str) -> Any:
    """A field's value, or its fixed default while it is still `auto` (a task prepared
    outside a run, e.g. by a test; runs resolve every `auto` field first)."""
    value = get_field(recipe, dotted)
    return fallbacks(recipe)[dotted] if value == AUTO else value


def auto_fields(recipe: Recipe) -> list[str]:
    return [f for f in fallbacks(recipe) if get_field(recipe, f) == AUTO]


def with_fallbacks(recipe: Recipe) -> Recipe:
    """Every `auto` field at its fixed default: the provisional recipe data is prepared
    with before the rules have seen it."""
    todo = auto_fields(recipe)
    fixed = fallbacks(recipe)
    return recipe.with_overrides({f: fixed[f] for f in todo}) if todo else recipe


def resolve(recipe: Recipe, facts: DataFacts) -> Resolution:
    """Fill the `auto` fields of `recipe` from the task's (and method's) rules."""
    p = Proposals(recipe, facts)
    recipe.task.auto_defaults(p)
    if "training.lr" in p.choices:
        adapted = recipe.method.auto_lr(p.choices["training.lr"].value)
        if adapted is not None:
            p.choices["training.lr"] = Choice(*adapted)
    chosen: dict[str, Choice] = {}
    overridden: dict[str, dict[str, Any]] = {}
    for f, fixed in fallbacks(recipe).items():
        rule = p.choices.get(f)
        current = get_field(recipe, f)
        if current == AUTO:
            if not recipe.training.auto:
                chosen[f] = Choice(fixed, "training.auto is off: the fixed default", "FALLBACK")
            elif rule is None:
                chosen[f] = Choice(
                    fixed,
                    f"no rule for task {recipe.task.name!r}: the fixed default",
                    "FALLBACK",
                )
            else:
                chosen[f] = rule
        elif rule is not None and recipe.training.auto and rule.value != current:
            overridden[f] = {"yours": current, "auto": rule.value, "reason": rule.reason}
    update = {f: c.value for f, c in chosen.items()}
    resolved = recipe.with_overrides(update) if update else recipe
    return Resolution(resolved, chosen, overridden, facts)


# --------------------------------------------------------------------------- shared rules
LENGTH_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)


def length_rule(p: Proposals, quantile: float, cap: int, source: str, room: int = 0) -> None:
    """training.max_length: the smallest of LENGTH_BUCKETS that holds `quantile` of the
    training inputs (longer ones are truncated and counted in run.json) plus `room` tokens
    (a reply generated after the prompt), at most `cap` and the model's limit."""
    lengths = p.facts.lengths
    if not lengths:
        return
    s = sorted(n + room for n in lengths)
    q = s[min(len(s) - 1, max(0, math.ceil(quantile * len(s)) - 1))]
    limit = min(cap, p.facts.max_positions or cap)
    value = next((b for b in LENGTH_BUCKETS if b >= q), LENGTH_BUCKETS[-1])
    value = min(value, limit)
    kept = sum(x <= value for x in s) / len(s)
    p.propose(
        "training.max_length",
        value,
        f"{kept:.1%} of the {len(s):,} training inputs fit (the {quantile:.1%} quantile is "
        f"{q} tokens"
        + (f" with {room} for the generated reply" if room else "")
        + "; longer ones are truncated and counted)",
        source,
    )


def schedule_rule(
    p: Proposals,
    *,
    floor_steps: int,
    min_epochs: float,
    source: str,
    evaluations: int = 10,
    small: int = 2000,
    patience: int = 5,
    rows: int | None = None,
) -> None:
    """epochs from a floor of optimizer steps (small sets) or `min_epochs` (large ones);
    with many short epochs, ~`evaluations` validations and checkpoints per run instead of
    one per epoch; early stopping with best-weights restore for sets up to `small` examples
    that have a validation split. `rows`: training rows per epoch where they are not
    examples (language models: blocks of tokens)."""
    n = rows if rows is not None else p.facts.n_train
    if n <= 0:
        return
    tr = p.recipe.training
    batch = p.effective("training.batch_size") * tr.grad_accum
    per_epoch = math.ceil(n / batch)
    need = math.ceil(floor_steps / per_epoch)
    epochs = float(max(min_epochs, need))
    why = f"{n:,} training rows at batch {batch} = {per_epoch} steps per epoch; " + (
        f"{epochs:g} epochs reach the floor of {floor_steps} optimizer steps"
        if need > min_epochs
        else f"{epochs:g} epochs (at least {floor_steps} steps either way)"
    )
    epochs = p.propose("training.epochs", epochs, why, source)
    total = tr.max_steps if tr.max_steps is not None else math.ceil(float(epochs) * per_epoch)
    if total / per_epoch > evaluations:
        every = max(1, math.ceil(total / evaluations))
        why = f"{total / per_epoch:.0f} short epochs: validate and checkpoint {evaluations} times"
        p.propose("evaluation.every_steps", every, f"{why} (every {every} steps)", source)
        p.propose("training.checkpoint_every", every, why, source)
        p.propose("training.checkpoint_each_epoch", False, why, source)
    else:
        why = f"{total / per_epoch:.3g} epochs: validate and checkpoint at each epoch end"
        p.propose("evaluation.every_steps", None, why, source)
        p.propose("training.checkpoint_every", None, why, source)
        p.propose("training.checkpoint_each_epoch", True, why, source)
    if p.facts.n_validation == 0:
        p.propose("evaluation.patience", None, "no validation split: no early stopping", source)
    elif small <= 0:
        p.propose(
            "evaluation.patience",
            None,
            "the metric keeps improving over this task's schedule: no early stopping",
            source,
        )
    elif p.facts.n_train <= small:
        p.propose(
            "evaluation.patience",
            patience,
            f"{p.facts.n_train:,} training examples (at most {small:,}): stop after {patience} "
            "validations without improvement and export the best-validation weights",
            source,
        )
    else:
        p.propose(
            "evaluation.patience",
            None,
            f"{p.facts.n_train:,} training examples (over {small:,}): train the whole schedule",
            source,
        )


def encoder_lr(p: Proposals) -> None:
    """training.lr for fully fine-tuned transformer encoders, by size: small models take
    larger rates (Turc et al. 2019 tune small BERTs over 1e-4..3e-5 and pick the large end;
    BERT-base 2e-5..5e-5 (Devlin et al. 2019); large models 1e-5..2e-5 (Mosbach et al. 2021)).
    MiniLM-L6 (22.7M) at 1e-4 is recipes/banking77.yaml, measured in benchmarks/README.md."""
    n = p.facts.parameters
    if n <= 60_000_000:
        lr, size = 1e-4, "under 60M parameters"
    elif n <= 200_000_000:
        lr, size = 5e-5, "60M-200M parameters (BERT-base size)"
    else:
        lr, size = 2e-5, "over 200M parameters"
    p.propose(
        "training.lr",
        lr,
        f"a {n / 1e6:.1f}M-parameter model ({size})",
        "Turc et al. 2019; Devlin et al. 2019; Mosbach et al. 2021; benchmarks/README.md",
    )


def text_encoder_rules(p: Proposals, head_lr: float, head_source: str) -> None:
    """The schedule finekit's text classifiers and regressors share (a pre-trained encoder
    and a new, randomly initialised head)."""
    p.propose(
        "training.batch_size",
        32,
        "BERT-style fine-tuning batch (16-32)",
        "Devlin et al. 2019; benchmarks/README.md (every recorded text run)",
    )
    encoder_lr(p)
    p.propose(
        "training.head_lr", head_lr, "the new head starts random: train it faster", head_source
    )
    p.propose(
        "training.warmup_ratio",
        0.1,
        "linear warm-up over the first 10% of steps keeps the first updates from wrecking "
        "the pre-trained features",
        "Devlin et al. 2019; Mosbach et al. 2021",
    )
    length_rule(p, 0.99, 512, "recipes/banking77.yaml (64 tokens hold 99.9% of Banking77)")
    schedule_rule(
        p,
        floor_steps=300,
        min_epochs=3,
        source="benchmarks/README.md (the 300-step floor of `compare --min-steps`; "
        "3 epochs: Devlin et al. 2019)",
    )
