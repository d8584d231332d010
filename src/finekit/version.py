"""finekit's version (its own module: the run directory records it without importing
the whole package)."""

__version__ = "0.1.0"
