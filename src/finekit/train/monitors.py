"""Built-in loop callbacks for the overfitting risk: early stopping and the alarm.

Both read the validation rows the loop writes (`state.last_eval`, which also carries the
training-subset metrics under `train_eval`) and keep their state in `progress.extra`, so a
resumed run continues them exactly.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)


def _better(a: float, b: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if b is None:
        return True
    return a > b + min_delta if mode == "max" else a < b - min_delta


@dataclass
class _ESState:
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_at: int | None = None


class EarlyStopping:
    """Stop after `patience` evaluations without improvement; ask the loop to keep the best
    weights (`control.should_save_best`) whenever the metric improves."""

    key = "early_stopping"

    def __init__(
        self, metric: str, mode: str, patience: int | None, min_delta: float, keep_best: bool
    ) -> None:
        self.metric, self.mode, self.patience = metric, mode, patience
        self.min_delta, self.keep_best = min_delta, keep_best
        self.s = _ESState()

    def on_train_begin(self, state: Any, control: Any) -> None:
        saved = state.progress.extra.get(self.key)
        if saved:
            self.s = _ESState(**saved)

    def on_evaluate(self, state: Any, control: Any) -> None:
        row = state.last_eval
        if self.metric not in row:
            return
        value = float(row[self.metric])
        if _better(value, self.s.best, self.mode, self.min_delta):
            self.s.best, self.s.best_step, self.s.bad_evals = value, row["step"], 0
            control.should_save_best = self.keep_best
        else:
            self.s.bad_evals += 1
            if self.patience is not None and self.s.bad_evals >= self.patience:
                self.s.stopped_at = row["step"]
                control.should_stop = True
                log.info(
                    "early stopping at step %d: %s has not improved for %d evaluations "
                    "(best %.4f at step %d)",
                    row["step"],
                    self.metric,
                    self.s.bad_evals,
                    self.s.best,
                    self.s.best_step,
                )
        state.progress.extra[self.key] = asdict(self.s)

    def summary(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "patience": self.patience,
            **asdict(self.s),
        }


@dataclass
class _OverfitState:
    points: list[list[float]] = field(default_factory=list)  # [step, val, train, gap]
    alarm: dict[str, Any] | None = None


class OverfitMonitor:
    """Raise an alarm when validation has stopped improving for `window` evaluations while
    the gap between the training subset and validation widened by more than `tolerance`.

    The alarm names the step where the widening started: the last validation best.
    """

    key = "overfit_monitor"

    def __init__(self, metric: str, mode: str, window: int = 2, tolerance: float = 0.01):
        self.metric, self.mode, self.window, self.tolerance = metric, mode, window, tolerance
        self.s = _OverfitState()

    def on_train_begin(self, state: Any, control: Any) -> None:
        saved = state.progress.extra.get(self.key)
        if saved:
            self.s = _OverfitState(**saved)

    def on_evaluate(self, state: Any, control: Any) -> None:
        row = state.last_eval
        train = row.get("train_eval", {})
        if self.metric not in row or self.metric not in train:
            return
        val, tr = float(row[self.metric]), float(train[self.metric])
        gap = tr - val if self.mode == "max" else val - tr  # >0: training looks better
        self.s.points.append([row["step"], val, tr, gap])
        state.progress.extra[self.key] = asdict(self.s)
        if self.s.alarm is not None:
            return
        best_i = 0
        for i, p in enumerate(self.s.points):
            if _better(p[1], self.s.points[best_i][1], self.mode):
                best_i = i
        since = len(self.s.points) - 1 - best_i
        if since < self.window:
            return
        gap_best, gap_now = self.s.points[best_i][3], gap
        widening = all(
            self.s.points[j][3] >= self.s.points[j - 1][3] - self.tolerance / 2
            for j in range(best_i + 1, len(self.s.points))
        )
        if gap_now - gap_best > self.tolerance and widening:
            step = int(self.s.points[best_i][0])
            self.s.alarm = {
                "step": step,
                "raised_at_step": int(row["step"]),
                "metric": self.metric,
                "best_validation": self.s.points[best_i][1],
                "gap_at_best": gap_best,
                "gap_now": gap_now,
                "message": (
                    f"overfitting: validation {self.metric} peaked at step {step} "
                    f"({self.s.points[best_i][1]:.4f}) and has not improved for {since} "
                    f"evaluations while the train/validation gap widened from "
                    f"{gap_best:.4f} to {gap_now:.4f}"
                ),
            }
            state.progress.extra[self.key] = asdict(self.s)
            log.warning("%s", self.s.alarm["message"])

    def summary(self) -> dict[str, Any]:
        return {
            "detected": self.s.alarm is not None,
            **(self.s.alarm or {}),
            "evaluations": len(self.s.points),
        }
