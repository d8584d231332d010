"""finekit's exceptions: each names the file, column or field at fault and says how to fix it.

The CLI prints any `FinekitError` as one line (no traceback) and exits with status 2.
"""

from __future__ import annotations


class FinekitError(Exception):
    """Base of every error finekit raises on purpose (bad input, bad recipe, bad run dir)."""


class RecipeError(FinekitError, ValueError):
    """A recipe field has an unknown name, a wrong type or a value outside what is allowed."""


class DataError(FinekitError, ValueError):
    """A data file is missing, unreadable, empty, or lacks a column the task needs."""


class ModelError(FinekitError, ValueError):
    """A model path or hub id does not hold a model finekit can load for the task."""


class RunDirError(FinekitError, ValueError):
    """An output/run directory is not usable (exists and is not a finekit run, no checkpoint...)."""


class RegistryError(FinekitError, KeyError):
    """A task, method or model family name is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class LaunchError(FinekitError, RuntimeError):
    """A multi-process launch finekit cannot run safely (the processes do not see each other)."""
