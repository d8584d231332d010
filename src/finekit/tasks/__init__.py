"""The task room: one module per task, each registered by name."""

from finekit.tasks import causal_lm as _causal_lm  # noqa: F401,E402  (registers "causal_lm")
from finekit.tasks import chat as _chat  # noqa: F401,E402  (registers "chat")
from finekit.tasks import classify as _classify  # noqa: F401,E402  (registers "classify")
from finekit.tasks import masked_lm as _masked_lm  # noqa: F401,E402  (registers "masked_lm")
from finekit.tasks.base import (
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
