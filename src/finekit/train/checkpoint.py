"""Atomic checkpoints and exact resume.

A checkpoint is a folder `checkpoints/step-00000123/` with the trainable weights and all
buffers (safetensors), optimizer and scheduler state (torch, loaded with weights_only=True),
RNG states and the loop's `Progress`. It is written to a temporary folder and renamed into
place, so a folder with the final name is always complete; a crash mid-write leaves only a
`.tmp-*` folder that is ignored and cleaned up.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from finekit.errors import RunDirError

log = logging.getLogger(__name__)

# File names inside a checkpoint folder (torchtune-style named constants).
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG_TENSORS = "rng.safetensors"
RNG_STATE = "rng.json"
PROGRESS = "progress.json"
SCALER = "scaler.pt"
ENGINE = "engine"  # accelerate's save_state folder (sharded optimizers: FSDP, DeepSpeed)
PREFIX = "step-"


@dataclass
class Progress:
    """The loop's position: everything needed, with the files, to continue exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the current epoch (0-based)
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    samples_seen: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    # Wall time of the run up to this checkpoint, summed over attempts (setup, evaluation
    # and checkpointing included; work lost after the last checkpoint of a crash is not).
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # callbacks' own state (schedules...)


def checkpoint_state(
    model: nn.Module, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Trainable parameters and all buffers: frozen weights are rebuilt from the base model.
    `state` is the model's full state dict when already gathered (FSDP)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    state = model.state_dict() if state is None else state
    return {
        k: v.detach().cpu().contiguous() for k, v in state.items() if k in trainable or k in buffers
    }


def save_checkpoint(
    root: Path,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
    keep: int,
    scaler: Any = None,
    rng_states: list[dict[str, Any]] | None = None,
    engine_dir: Path | None = None,
) -> Path:
    """Write a complete checkpoint atomically; keep only the newest `keep`. `rng_states`:
    every process's `rng_state()` by rank (default: this process's alone). `engine_dir`:
    a folder accelerate's `save_state` wrote on every rank (sharded optimizer, scheduler),
    moved in as `engine/` in place of this process's optimizer file."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{progress.step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # safetensors refuses tensors that share memory (tied weights): clone them apart.
    save_file({k: v.clone() for k, v in model_state.items()}, str(tmp / WEIGHTS))
    if engine_dir is not None:
        os.replace(engine_dir, tmp / ENGINE)
    else:
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
    # The scheduler is finekit's own (stepped at sync boundaries, not prepared by
    # accelerate), so accelerate's save_state does not hold it.
    torch.save(scheduler.state_dict(), tmp / SCHEDULER)
    if scaler is not None:  # fp16 loss scale: part of exact resume
        torch.save(scaler.state_dict(), tmp / SCALER)
    _save_rng(tmp, rng_states or [rng_state()])
    (tmp / PROGRESS).write_text(json.dumps(asdict(progress), indent=1))
    _publish(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # left by a crash mid-write: never complete
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(".old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


BEST = "best"


def save_best_weights(
    root: Path, model_state: dict[str, torch.Tensor], info: dict[str, Any]
) -> Path:
    """checkpoints/best/: the weights of the best evaluation so far, replaced atomically."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / BEST
    tmp = root / f".tmp-{BEST}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.clone() for k, v in model_state.items()}, str(tmp / WEIGHTS))
    (tmp / "best.json").write_text(json.dumps(info, indent=1, default=str))
    _publish(tmp, final)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Make a fully written temp folder visible under its final name in one rename.
    An existing folder of that name (the same step re-saved after a resume, the previous
    best) is moved aside first and removed after."""
    for f in tmp.rglob("*"):  # flush file contents before the rename makes them visible
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def load_best_weights(root: Path, model: nn.Module) -> dict[str, Any] | None:
    best = root / BEST
    if not (best / WEIGHTS).is_file():
        return None
    model.load_state_dict(load_file(str(best / WEIGHTS)), strict=False)
    info: dict[str, Any] = json.loads((best / "best.json").read_text())
    return info


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are never listed)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(root: Path) -> Path | None:
    cps = list_checkpoints(root)
    return cps[-1] if cps else None


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any = None,
    rank: int = 0,
    engine: bool = False,
) -> Progress:
    """Restore weights, optimizer, scheduler and this process's (`rank`) random state from
    `path`; return the progress. With `engine`, the optimizer is in `engine/` for
    accelerate's `load_state` (the caller's, on every rank)."""
    need = (WEIGHTS, SCHEDULER, PROGRESS) if engine else (WEIGHTS, OPTIMIZER, SCHEDULER, PROGRESS)
    missing = [f for f in need if not (path / f).is_file()]
    if missing:
        raise RunDirError(f"checkpoint {path} is incomplete (missing {missing}); {_instead(path)}")
    # Sharded (engine) checkpoints: accelerate's load_state restores the sharded weights.
    state = {} if engine else _read(path, WEIGHTS, lambda f: load_file(str(f)))
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise RunDirError(
            f"checkpoint {path} does not fit this model/method: unknown weights {unknown[:3]}; "
            "was the recipe changed since the run started?"
        )
    # Weights absent from the checkpoint were frozen when it was written (e.g. blocks that
    # gradual unfreezing had not opened yet): unchanged, so the base model's are right. The
    # recipe itself is compared on --resume, so a changed method is refused before this.
    model.load_state_dict(state, strict=False)
    if not engine:
        optimizer.load_state_dict(
            _read(path, OPTIMIZER, lambda f: torch.load(f, map_location="cpu", weights_only=True))
        )
    scheduler.load_state_dict(_read(path, SCHEDULER, lambda f: torch.load(f, weights_only=True)))
    if scaler is not None and (path / SCALER).is_file():
        scaler.load_state_dict(_read(path, SCALER, lambda f: torch.load(f, weights_only=True)))
    _load_rng(path, rank)
    data = _read(path, PROGRESS, lambda f: json.loads(f.read_text()))
    return Progress(**data)


def _read(path: Path, name: str, load: Callable[[Path], Any]) -> Any:
    """One file of a checkpoint; a damaged one is named, with what to do instead."""
    try:
        return load(path / name)
    except (OSError, MemoryError) as e:  # the file may be fine: never advise deleting it
        raise RunDirError(
            f"checkpoint {path}: {name} cannot be read here ({type(e).__name__}: {e}); "
            "check permissions, disk and memory, then resume again"
        ) from None
    except Exception as e:  # safetensors, torch.load and json each raise their own types
        first = (str(e).splitlines() or [""])[0] or type(e).__name__
        raise RunDirError(
            f"checkpoint {path}: {name} is unreadable ({first}); if it is damaged, {_instead(path)}"
        ) from None


def _instead(path: Path) -> str:
    """What to do about a damaged checkpoint: fall back to an older one if there is one."""
    older = [p for p in list_checkpoints(path.parent) if p.name < path.name]
    if older:
        return f"delete it and resume again to continue from {older[-1].name}"
    return "delete it to train from the start (training.keep_checkpoints > 1 keeps a spare)"


def rng_state() -> dict[str, Any]:
    """This process's random state: torch (CPU and every GPU), Python and NumPy."""
    py = random.getstate()
    np_state: Any = np.random.get_state()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *[float(x) for x in np_state[2:]]],
    }


def _prefix(rank: int) -> str:
    return "" if rank == 0 else f"rank{rank}/"  # rank 0 as single-process runs store it


def _save_rng(folder: Path, states: list[dict[str, Any]]) -> None:
    """One file of tensors and one of JSON for all processes: under data parallelism each
    draws its own dropout masks and augmentations, so each gets its own stream back."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, Any] = {}
    for rank, st in enumerate(states):
        tensors[f"{_prefix(rank)}torch_cpu"] = st["torch_cpu"]
        for i, t in enumerate(st["torch_cuda"]):
            tensors[f"{_prefix(rank)}torch_cuda_{i}"] = t
        if rank:
            ranks[str(rank)] = {"python": st["python"], "numpy": st["numpy"]}
    save_file(tensors, str(folder / RNG_TENSORS))
    first = states[0]
    (folder / RNG_STATE).write_text(
        json.dumps({"python": first["python"], "numpy": first["numpy"], "ranks": ranks})
    )


def restore_rng(folder: Path, rank: int = 0) -> None:
    """This process's random state as the checkpoint in `folder` recorded it."""
    _load_rng(folder, rank)


def _load_rng(folder: Path, rank: int = 0) -> None:
    if not (folder / RNG_TENSORS).is_file():
        return
    tensors = _read(folder, RNG_TENSORS, lambda f: load_file(str(f)))
    data = _read(folder, RNG_STATE, lambda f: json.loads(f.read_text()))
    prefix = _prefix(rank)
    if f"{prefix}torch_cpu" not in tensors:
        log.warning(
            "checkpoint %s holds no random state for process %d (written by fewer processes): "
            "it continues with process 0's; the resumed run will not repeat the original",
            folder,
            rank,
        )
        prefix, rank = "", 0
    torch.set_rng_state(tensors[f"{prefix}torch_cpu"])
    cuda_keys = [k for k in tensors if k.startswith(f"{prefix}torch_cuda_")]
    cuda = [tensors[k] for k in sorted(cuda_keys, key=lambda k: int(k.rsplit("_", 1)[1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    own = data if rank == 0 else data["ranks"][str(rank)]
    v, internal, gauss = own["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = own["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
