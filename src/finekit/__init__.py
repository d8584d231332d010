"""finekit: fine-tune pre-trained models for one task with little data — cheap, safe,
provable. `from finekit import Recipe, finetune`."""

from finekit.experiments.compare import compare  # noqa: E402
from finekit.experiments.seeds import finetune_folds, finetune_seeds  # noqa: E402
from finekit.experiments.tune import tune  # noqa: E402
from finekit.recipe import Recipe  # noqa: E402
from finekit.report import write_report  # noqa: E402
from finekit.run import FinetuneResult, finetune, make_recipe  # noqa: E402
from finekit.serve.predict import load_run  # noqa: E402
from finekit.version import __version__  # noqa: E402

__all__ = [
    "FinetuneResult",
    "Recipe",
    "__version__",
    "compare",
    "finetune",
    "finetune_folds",
    "finetune_seeds",
    "tune",
    "load_run",
    "make_recipe",
    "write_report",
]
