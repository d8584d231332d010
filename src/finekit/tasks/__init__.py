"""The task room: one module per task, each registering itself by name; the list of
finekit's own is `finekit.plugins.BUILTIN`. The contract they implement is
`finekit.core.contracts`."""

from finekit.core.contracts import (
    TASKS,
    EncodedDataset,
    HeadSpec,
    Prepared,
    Task,
    build_task,
    register_task,
)

__all__ = [
    "TASKS",
    "EncodedDataset",
    "HeadSpec",
    "Prepared",
    "Task",
    "build_task",
    "register_task",
]
