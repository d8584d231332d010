"""Classification on a decoder-only LM whose tokenizer has no pad token (GPT-2, Llama and
most chat models ship so): finekit pads with EOS, tells the model which id is padding (its
classifier reads the last real token), and the export keeps both."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import CLASS_WORDS, FILLER, build_tiny_llama

from finekit import Recipe, finetune
from finekit.serve.predict import load_run


@pytest.fixture(scope="module")
def padless_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    words = sorted({w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER))
    d = build_tiny_llama(
        tmp_path_factory.mktemp("padless-llama"), ["<unk>", "<eos>", *words], pad=False
    )
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(d).pad_token is None
    return d


def test_a_decoder_without_pad_classifies_and_pads_correctly(
    padless_llama: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    recipe = Recipe.from_dict(
        {
            "model": str(padless_llama),
            "data": {"train": str(toy_data["train"]), "test": str(toy_data["test"])},
            "training": {
                "epochs": 8,
                "batch_size": 8,
                "lr": 3e-3,
                "precision": "fp32",
                "warmup_ratio": 0.0,
            },
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    result = finetune(recipe)
    assert result.metrics["test"]["accuracy"] >= 0.8  # chance is 1/3

    model_dir = result.model_dir
    assert json.loads((model_dir / "config.json").read_text())["pad_token_id"] == 1
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(model_dir).pad_token == "<eos>"

    # The classifier must read each text's last real token, not padding: predicting in
    # padded batches gives exactly what predicting one text at a time gives.
    loaded = load_run(result.run_dir)
    test = pd.read_csv(toy_data["test"]).drop(columns=["label"])
    lengths = test["text"].str.split().str.len()
    assert lengths.nunique() > 1  # batches really hold texts of different lengths
    batched = loaded.predict(test, batch_size=16)
    alone = loaded.predict(test, batch_size=1)
    assert [p["label"] for p in batched] == [p["label"] for p in alone]
    assert [p["score"] for p in batched] == pytest.approx([p["score"] for p in alone], abs=1e-5)
