"""Loop events and callbacks (fastai-style: one short, fixed event list).

A callback is any object with some of the `on_*` methods below; each receives the loop
state. A failing callback is re-raised naming the callback and the event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EVENTS = (
    "on_train_begin",  # after setup/resume, before the first batch
    "on_epoch_begin",
    "on_step_end",  # after an optimizer step (and logging)
    "on_evaluate",  # after a validation pass: state.last_eval holds the metrics
    "on_checkpoint",  # after a checkpoint is complete on disk: kw path
    "on_epoch_end",
    "on_train_end",
)


class CallbackError(RuntimeError):
    """A callback raised; the message names it and the event."""


@dataclass
class Control:
    """What callbacks may ask of the loop."""

    should_stop: bool = False
    should_evaluate: bool = False
    should_checkpoint: bool = False
    should_save_best: bool = False  # keep these weights as the best so far


def fire(callbacks: list[Any], event: str, state: Any, control: Control, **kw: Any) -> None:
    assert event in EVENTS, event
    for cb in callbacks:
        fn = getattr(cb, event, None)
        if fn is None:
            continue
        try:
            fn(state, control, **kw)
        except Exception as e:
            raise CallbackError(
                f"callback {type(cb).__name__} failed in {event}: {type(e).__name__}: {e}"
            ) from e
