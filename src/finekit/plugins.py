"""Where tasks, methods and model families come from: finekit's own plug-ins, listed here
one line each, and any installed package's under the `finekit.plugins` entry-point group.

Each plug-in module registers itself on import (`register_task`, `register_method`,
`register_family`); the recipe finds it by name. Loading goes through `importlib`, so the
schema and the core never import a particular task, method or family.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

log = logging.getLogger(__name__)

# Model families first, in auto-detection order: specific carried families before "hf",
# which claims any folder with a config.json.
BUILTIN: tuple[str, ...] = (
    "finekit.models.efficientnet_lite",
    "finekit.models.hf",
    "finekit.methods.full",
    "finekit.methods.freeze",
    "finekit.methods.gradual",
    "finekit.methods.bitfit",
    "finekit.methods.linear_probe",
    "finekit.methods.lora",
    "finekit.methods.ia3",
    "finekit.methods.prompt_tuning",
    "finekit.tasks.classify",
    "finekit.tasks.lm",
    "finekit.tasks.chat",
    "finekit.tasks.regress",
)

_loaded = False


def load_plugins() -> None:
    """Import every plug-in once (each registers itself); idempotent and cheap after."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: plug-ins register into the registries that call this
    try:
        for name in BUILTIN:
            importlib.import_module(name)
    except BaseException:
        _loaded = False  # a failed import is reported again, not a half-filled registry
        raise
    for ep in entry_points(group="finekit.plugins"):
        try:
            ep.load()
        except Exception as e:  # a broken third-party plug-in must not stop finekit
            log.warning("finekit plug-in %s (%s) not loaded: %s", ep.name, ep.value, e)
