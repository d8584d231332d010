"""Which process this is, under `accelerate launch` or `torchrun`, on GPUs and on CPUs.

accelerate treats a `torchrun` launch as distributed only where it finds a GPU (or another
accelerator); on a CPU-only machine it needs `cpu=True` (what `accelerate launch --cpu`
sets), or every process believes it is the only one and all of them write the same run
directory. finekit asks for the CPU backend (gloo) itself when a launcher started several
processes and no accelerator is present, and refuses a launch that still ends up as lone
copies.
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState

from finekit.errors import LaunchError

LAUNCH_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_processes() -> int:
    """How many processes the launcher started (1 when run plainly)."""
    for name in LAUNCH_SIZE_VARS:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def process_state() -> PartialState:
    """accelerate's process state (rank, world size), set up right for CPU launches."""
    if not PartialState._shared_state and launched_processes() > 1 and not _has_accelerator():
        os.environ["ACCELERATE_USE_CPU"] = "true"  # the Accelerator made later agrees
        state = PartialState(cpu=True)
    else:
        state = PartialState()
    if launched_processes() > 1 and state.num_processes == 1:
        raise LaunchError(
            f"started as {launched_processes()} processes, but accelerate sees a single one "
            f"({state.distributed_type}); each would train alone and overwrite the others' "
            "run directory. Launch on GPUs with `accelerate launch` or `torchrun` (on a "
            "machine without accelerators finekit selects the CPU backend), or run one process"
        )
    return state
