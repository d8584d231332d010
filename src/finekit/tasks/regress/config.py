"""The `task:` section of a regression recipe."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from finekit.recipe import TaskConfig
from finekit.recipe.auto import Proposals, text_encoder_rules


class RegressConfig(TaskConfig):
    """Options of `regress`. The target is `data.label_column` (numbers)."""

    name: str = "regress"
    # mse: the mean squared error (the Gaussian likelihood); huber: squared near zero and
    # linear beyond `huber_delta`, so a few mislabelled targets pull the head less
    # (Huber 1964; torch's huber_loss).
    loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0.0)  # in standard deviations of the target
    # Train on (y - mean) / std of the training targets: the new head starts at the scale
    # its random init has (outputs ~N(0, small)), and one head rate suits any unit.
    # Predictions and metrics are always in the target's own unit.
    standardize: bool = True
    # Predictions clipped to the training targets' range (a 0-5 score stays in 0..5).
    clip_to_train_range: bool = False

    default_metric: ClassVar[str] = "rmse"

    def reads_text_pairs(self) -> bool:
        return True  # e.g. STS-B: a sentence pair and its similarity

    def auto_defaults(self, p: Proposals) -> None:
        # One output on standardised targets: 10x the body (a classifier's 0.1 overshoots).
        text_encoder_rules(p, 1e-3, "recipes/stsb.yaml (measured in benchmarks/README.md)")
