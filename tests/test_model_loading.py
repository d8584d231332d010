"""What loading a backbone did to its weights is said, not hidden: re-initialised and
dropped weights are logged by name and counted in run.json; a body that did not load is
refused."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from finekit import Recipe, finetune
from finekit.errors import ModelError
from finekit.models import family_for
from finekit.recipe import ModelSpec
from finekit.tasks import HeadSpec

HEAD = HeadSpec("sequence-classification", 3, {0: "a", 1: "b", 2: "c"})


def _with_weights(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    save_file(edit(weights), str(dst / "model.safetensors"))
    return dst


def test_a_new_head_is_named_and_counted_in_run_json(tiny_recipe: Recipe) -> None:
    res = finetune(tiny_recipe.with_overrides({"training.epochs": 1}))
    model = json.loads((res.run_dir / "run.json").read_text())["model"]
    # The tiny backbone was saved without a classifier: exactly that head is new.
    assert model["reinitialised"] == ["classifier.bias", "classifier.weight"]
    assert model["reinitialised_count"] == 2 and model["dropped_count"] == 0


def test_extra_checkpoint_weights_are_dropped_by_name(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    folder = _with_weights(
        tiny_model_dir, tmp_path / "extra", lambda w: {**w, "adapter.extra": torch.zeros(2)}
    )
    spec = ModelSpec(path=str(folder))
    with caplog.at_level(logging.INFO, logger="finekit"):
        loaded = family_for(spec).load(spec, HEAD)
    assert loaded.dropped == ["adapter.extra"]
    assert "dropped): 1: adapter.extra" in caplog.text


def test_a_body_that_did_not_load_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Another model's naming (every key renamed): transformers would start from random.
    folder = _with_weights(
        tiny_model_dir, tmp_path / "renamed", lambda w: {f"other.{k}": v for k, v in w.items()}
    )
    spec = ModelSpec(path=str(folder))
    with pytest.raises(
        ModelError, match=r"weights were not in the checkpoint .* the body did not load"
    ):
        family_for(spec).load(spec, HEAD)
