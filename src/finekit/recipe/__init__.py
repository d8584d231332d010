"""The recipe: `schema.py` (the pydantic sections and `Recipe`) and `io.py` (YAML, `--set`
overrides, merging, error messages)."""

from finekit.recipe.io import apply_overrides, deep_merge
from finekit.recipe.schema import (
    HF_SPLITS,
    RETENTION_METRICS,
    AugmentSpec,
    DataSpec,
    DropoutSpec,
    EvaluationSpec,
    FoldSpec,
    GuardSpec,
    MethodConfig,
    ModelSpec,
    OutputSpec,
    Precision,
    Recipe,
    ReplaySpec,
    RuleSpec,
    Section,
    TaskConfig,
    TrainingSpec,
)

__all__ = [
    "HF_SPLITS",
    "RETENTION_METRICS",
    "AugmentSpec",
    "DataSpec",
    "DropoutSpec",
    "EvaluationSpec",
    "FoldSpec",
    "GuardSpec",
    "MethodConfig",
    "ModelSpec",
    "OutputSpec",
    "Precision",
    "Recipe",
    "ReplaySpec",
    "RuleSpec",
    "Section",
    "TaskConfig",
    "TrainingSpec",
    "apply_overrides",
    "deep_merge",
]
