"""Typed records of a finished run; `RunRecord.to_json()` is what run.json gains at the end.

Each stage of `finetune()` returns one of these instead of adding keys to a dict, so the
shape of run.json is declared here, once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelRecord:
    """Which model the run started from, and what did not load as saved."""

    path: str
    source: str  # the resolved local folder or hub id
    family: str
    init: str  # pretrained | scratch
    # Weights the checkpoint did not provide or could not fit (re-initialised), and
    # weights it had that the model has no place for (dropped), by name.
    reinitialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["reinitialised_count"] = len(self.reinitialised)
        out["dropped_count"] = len(self.dropped)
        return out


@dataclass
class TrainRecord:
    """What the loop did and what it cost."""

    seconds: float
    samples_per_second: float
    tokens_per_second: float
    trainable_parameters: int
    total_parameters: int
    steps: int
    epochs: float
    samples_seen: int
    forward_flops_per_example: float | None
    tokens_seen: int
    precision: str
    device: str
    num_processes: int
    resumed_from: str | None  # the checkpoint a resumed run continued from


@dataclass
class RetentionRecord:
    """The base model's general skill before, per evaluation and after training."""

    reference: str
    sentences: int
    before: dict[str, float]
    after: dict[str, float]
    per_evaluation: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. general_perplexity_before
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reference": self.reference,
            "sentences": self.sentences,
            "before": self.before,
            "after": self.after,
            "per_evaluation": self.per_evaluation,
            **self.extra,
        }
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass
class RunRecord:
    """Everything `finetune()` adds to run.json when a run completes."""

    task: str
    method: str
    metrics: dict[str, dict[str, Any]]
    train: TrainRecord
    data: dict[str, Any]
    retention: RetentionRecord | None
    early_stopping: dict[str, Any]
    regularisers: dict[str, dict[str, Any]]
    restored_best: dict[str, Any] | None
    overfitting: dict[str, Any] | None
    alarms: list[str]
    artifacts: dict[str, Any]
    wall_seconds: float
    wall_seconds_this_attempt: float
    finished_at: str
    # What `auto` chose for each field, why, from which source, and which fields the user
    # set where auto would have chosen otherwise (recipe/auto.py Resolution.to_json).
    auto: dict[str, Any] = field(default_factory=dict)
    status: str = "completed"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "task": self.task,
            "method": self.method,
            "metrics": self.metrics,
            "train": asdict(self.train),
            "auto": self.auto,
            "data": self.data,
            "retention": self.retention.to_json() if self.retention else None,
            "early_stopping": self.early_stopping,
            "regularisers": self.regularisers,
            "restored_best": self.restored_best,
            "overfitting": self.overfitting,
            "alarms": self.alarms,
            "artifacts": self.artifacts,
            "wall_seconds": self.wall_seconds,
            "wall_seconds_this_attempt": self.wall_seconds_this_attempt,
            "finished_at": self.finished_at,
        }
