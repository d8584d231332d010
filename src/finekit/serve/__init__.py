"""Inference on finished runs: predict, evaluate (later: chat, HTTP)."""

from finekit.serve.predict import LoadedRun, load_run

__all__ = ["LoadedRun", "load_run"]
