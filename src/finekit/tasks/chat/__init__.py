"""`chat`: supervised tuning of a causal LM on conversations (assistant turns only are
learned), with generation scored against references and house-style rules."""

from finekit.core.contracts import register_task
from finekit.tasks.chat.task import ChatConfig, ChatTask

register_task("chat", ChatConfig, ChatTask)

__all__ = ["ChatConfig", "ChatTask"]
