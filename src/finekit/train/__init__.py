"""The training room: the accelerate loop, callbacks, atomic checkpoints, precision."""

from finekit.train.callbacks import EVENTS, CallbackError, Control
from finekit.train.checkpoint import Progress, latest_checkpoint
from finekit.train.loop import Loop, TrainSummary, make_accelerator

__all__ = [
    "EVENTS",
    "CallbackError",
    "Control",
    "Loop",
    "Progress",
    "TrainSummary",
    "latest_checkpoint",
    "make_accelerator",
]
