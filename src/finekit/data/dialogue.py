"""Dialogue JSON -> chat messages, and the house-style transform of training replies.

Field mapping (the `task.dialogue` section of the chat task; defaults fit Taskmaster):
a dialogue row holds a list of turns in column `turns` (e.g. `utterances`); each turn is a
mapping with a `speaker` field and a `text` field; `roles` maps speaker values to chat roles
(`user`, `assistant`, `system`). A speaker missing from `roles` is a DataError naming the
dialogue and the turn, never a silent drop.
"""

from __future__ import annotations

from typing import Any

from finekit.errors import DataError


def dialogue_to_messages(
    turns: Any,
    where: str,
    speaker: str = "speaker",
    text: str = "text",
    roles: dict[str, str] | None = None,
) -> list[dict[str, str]]:
    """One dialogue's turns as [{role, content}], in order."""
    roles = roles if roles is not None else {"user": "user", "assistant": "assistant"}
    if hasattr(turns, "tolist"):
        turns = turns.tolist()
    if not isinstance(turns, list):
        raise DataError(f"{where}: the turns are not a list (got {type(turns).__name__})")
    out = []
    for k, t in enumerate(turns):
        if not isinstance(t, dict) or speaker not in t or text not in t:
            raise DataError(f"{where}: turn {k} lacks {speaker!r}/{text!r} (task.dialogue fields)")
        who = str(t[speaker])
        if who not in roles:
            raise DataError(
                f"{where}: unknown role {who!r} in turn {k}; map it in task.dialogue.roles "
                f"(known: {', '.join(roles)})"
            )
        out.append({"role": roles[who], "content": "" if t[text] is None else str(t[text])})
    return out


def apply_house_style(
    messages: list[dict[str, str]], greeting: str = "Hello! "
) -> list[dict[str, str]]:
    """A copy whose first assistant reply opens with `greeting` (unless it already does):
    house style is taught by training on replies that follow it."""
    out = [dict(m) for m in messages]
    for m in out:
        if m["role"] == "assistant":
            if not m["content"].startswith(greeting.strip()):
                m["content"] = greeting + m["content"].lstrip()
            break
    return out
