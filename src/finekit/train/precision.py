"""Choose the numeric precision: `auto` takes bf16 where the hardware runs it fast."""

from __future__ import annotations

import logging

import torch

from finekit.errors import RecipeError

log = logging.getLogger(__name__)


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls are 2-3x fp32 (GUIDE §5); elsewhere bf16 is emulated."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)


def resolve_precision(precision: str, device_type: str) -> str:
    """Map the recipe's precision to accelerate's mixed_precision: 'no', 'bf16' or 'fp16'."""
    if precision == "fp32":
        return "no"
    if device_type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if precision == "auto":
            return "bf16" if bf16_ok else "fp16"
        if precision == "bf16" and not bf16_ok:
            raise RecipeError("training.precision=bf16: this GPU has no bf16; use fp16 or auto")
        return precision
    if precision == "fp16":
        raise RecipeError(
            f"training.precision=fp16 needs a CUDA GPU (device here: {device_type}); "
            "use bf16, fp32 or auto"
        )
    if device_type == "cpu":
        if precision == "auto":
            return "bf16" if cpu_has_fast_bf16() else "no"
        if not cpu_has_fast_bf16():
            log.warning("training.precision=bf16 on a CPU without bf16 instructions: slow")
        return "bf16"
    # mps / xpu / others: stay safe unless asked.
    return "no" if precision == "auto" else precision
