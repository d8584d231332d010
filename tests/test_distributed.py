"""Data-parallel training through torchrun on CPU (gloo): the processes see each other, the
batch is split between them, the run directory is written once, and evaluation counts
every example exactly once."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finekit import Recipe

CRASH = """
import sys

from finekit import Recipe, finetune


class Crash:
    def on_step_end(self, state, control):
        if state.progress.step == int(sys.argv[3]):
            raise RuntimeError("simulated crash")


finetune(Recipe.from_yaml(sys.argv[1]).with_overrides({"output.dir": sys.argv[2]}),
         callbacks=[Crash()])
"""


def _launch(args: list[str], ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    done = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=600)
    assert (done.returncode == 0) is ok, done.stderr[-3000:]
    return done


def test_torchrun_on_cpu_trains_one_run_with_two_processes(
    tiny_recipe: Recipe, tmp_path: Path
) -> None:
    recipe = tmp_path / "r.yaml"
    tiny_recipe.with_overrides(
        {"training.epochs": 8, "training.lr": 3e-3, "output.dir": None}
    ).to_yaml(recipe)
    out = tmp_path / "ddp"
    _launch(["-m", "finekit.cli", "train", str(recipe), "--output", str(out)])
    run = json.loads((out / "run.json").read_text())
    train = run["train"]
    assert train["num_processes"] == 2 and run["status"] == "completed"
    # 8 per process = 16 per optimizer step over the 108 training rows: 7 steps an epoch.
    assert run["data"]["rows"]["train"] == 108
    assert train["steps"] == 7 * 8 and train["samples_seen"] == 16 * 7 * 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = collections.Counter((r["split"], r["step"]) for r in rows)
    assert max(logged.values()) == 1  # one writer: no row twice
    # 45 test rows over 2 processes: the padding duplicate is dropped, not scored twice.
    assert run["metrics"]["test"]["examples"] == 45
    assert len((out / "eval" / "predictions_test.csv").read_text().splitlines()) == 46
    assert run["metrics"]["test"]["accuracy"] >= 0.8  # chance is 1/3
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert sum(losses[-5:]) < sum(losses[:5])


def test_a_data_parallel_run_resumes_exactly(tiny_recipe: Recipe, tmp_path: Path) -> None:
    """Each process has its own random stream (dropout masks on its own shard): a resumed
    run must give every process back its own, or it drifts from the uninterrupted one."""
    recipe = tmp_path / "r.yaml"
    tiny_recipe.with_overrides(
        {"training.epochs": 3, "training.checkpoint_every": 5, "output.dir": None}
    ).to_yaml(recipe)
    _launch(["-m", "finekit.cli", "train", str(recipe), "--output", str(tmp_path / "full")])
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    broken = tmp_path / "broken"
    _launch([str(script), str(recipe), str(broken), "13"], ok=False)
    assert (broken / "checkpoints" / "step-00000010").is_dir()
    _launch(["-m", "finekit.cli", "train", "--resume", str(broken)])
    full = json.loads((tmp_path / "full" / "run.json").read_text())
    resumed = json.loads((broken / "run.json").read_text())
    assert resumed["train"]["resumed_from"].endswith("step-00000010")
    assert resumed["metrics"]["test"] == full["metrics"]["test"]
    import torch
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(broken / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_each_process_gets_its_own_random_state_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On GPUs each process's generator advances by its own shard's size, so the streams
    drift apart; a checkpoint keeps one per rank (rank 0 where single runs keep theirs)."""
    import logging
    import random

    import numpy as np
    import torch

    from finekit.train.checkpoint import Progress, load_checkpoint, rng_state, save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    streams = []
    for seed in (1, 2):  # two processes whose streams differ
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        streams.append(rng_state())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = save_checkpoint(tmp_path, state, opt, sched, Progress(step=3), 1, rng_states=streams)

    def next_draws() -> tuple[float, float, float]:
        return torch.rand(1).item(), random.random(), float(np.random.rand())

    drawn = {}
    for rank in (0, 1):
        load_checkpoint(path, model, opt, sched, rank=rank)
        drawn[rank] = next_draws()
    for rank, seed in ((0, 1), (1, 2)):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        assert drawn[rank] == next_draws()  # exactly where that process had left off
    # A run resumed with more processes than wrote the checkpoint: said, not silent.
    single = save_checkpoint(tmp_path / "one", state, opt, sched, Progress(step=3), 1)
    with caplog.at_level(logging.WARNING, logger="finekit.train.checkpoint"):
        load_checkpoint(single, model, opt, sched, rank=1)
    assert "holds no random state for process 1" in caplog.text


def test_a_launch_whose_processes_do_not_see_each_other_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from finekit.errors import LaunchError
    from finekit.train import distributed

    # As on a machine whose device accelerate does not run distributed: every process
    # would believe it is alone and write the same run directory.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "_has_accelerator", lambda: True)
    with pytest.raises(LaunchError, match="started as 2 processes, but accelerate sees a single"):
        distributed.process_state()
