"""The recipe's precision becomes accelerate's mixed_precision per device; impossible
combinations are refused before training, naming the field."""

from __future__ import annotations

import logging

import pytest
import torch

from finekit.errors import RecipeError
from finekit.train import precision as p


@pytest.mark.parametrize(
    ("bf16_gpu", "asked", "expected"),
    [
        (True, "auto", "bf16"),  # Ampere and later
        (False, "auto", "fp16"),  # older GPUs: fp16 with a loss scale
        (True, "bf16", "bf16"),
        (False, "fp16", "fp16"),
        (True, "fp32", "no"),
    ],
)
def test_gpu_takes_bf16_where_it_has_it_else_fp16(
    monkeypatch: pytest.MonkeyPatch, bf16_gpu: bool, asked: str, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    assert p.resolve_precision(asked, "cuda") == expected


def test_refusals_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(RecipeError, match="training.precision=bf16: this GPU has no bf16"):
        p.resolve_precision("bf16", "cuda")
    for device in ("cpu", "mps"):
        with pytest.raises(RecipeError, match=f"fp16 needs a CUDA GPU \\(device here: {device}"):
            p.resolve_precision("fp16", device)


@pytest.mark.parametrize("fast", [True, False])
def test_cpu_uses_bf16_only_where_it_is_fast(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fast: bool
) -> None:
    monkeypatch.setattr(p, "cpu_has_fast_bf16", lambda: fast)
    assert p.resolve_precision("auto", "cpu") == ("bf16" if fast else "no")
    with caplog.at_level(logging.WARNING, logger="finekit.train.precision"):
        assert p.resolve_precision("bf16", "cpu") == "bf16"  # asked for: honoured
    assert ("without bf16 instructions" in caplog.text) is not fast
    assert p.resolve_precision("auto", "mps") == "no"  # other devices: fp32 unless asked
    assert p.resolve_precision("bf16", "mps") == "bf16"
