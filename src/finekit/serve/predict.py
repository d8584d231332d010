"""Serving a finished run: `load_run(run_dir).predict(rows)`. The loading and evaluation of
an exported model live in `finekit.evaluate.exported`; this room only serves."""

from finekit.evaluate.exported import LoadedRun, load_run

__all__ = ["LoadedRun", "load_run"]
