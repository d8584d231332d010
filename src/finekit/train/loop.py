"""The training loop, on accelerate (devices, DDP/FSDP, mixed precision, accumulation).

Reads top to bottom: batch -> loss -> backward -> at the accumulation boundary clip,
step, schedule, zero -> log a row (loss, lr, grad norm, samples/s, tokens/s) -> evaluate
and checkpoint on schedule. The task says what a loss is; the loop never knows a modality.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, Sampler

from finekit.core.contracts import Batch, EncodedDataset, Task
from finekit.errors import RecipeError, RunDirError
from finekit.evaluate.metrics import headline
from finekit.evaluate.runner import run_outputs
from finekit.models.base import LayerGroups
from finekit.recipe import EvaluationSpec, TrainingSpec
from finekit.recipe.auto import concrete
from finekit.train.callbacks import Control, fire
from finekit.train.checkpoint import (
    ENGINE,
    Progress,
    checkpoint_state,
    latest_checkpoint,
    load_best_weights,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_best_weights,
    save_checkpoint,
)
from finekit.train.precision import resolve_precision

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- pieces
class EpochSampler(Sampler[int]):
    """Shuffles per epoch from (seed, epoch) alone, so a resumed run replays the same order.

    With `group_by_length`, transformers' LengthGroupedSampler makes batches of similar
    length (less padding) while keeping randomness between mega-batches.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        seed: int,
        group_by_length: bool,
        weights: list[float] | None = None,
        replay: tuple[int, int] | None = None,
    ):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.group_by_length = group_by_length
        # Per-example draw weights (balanced sampling): an epoch is len(data) draws with
        # replacement, so rare classes are seen about as often as common ones.
        self.weights = torch.tensor(weights, dtype=torch.double) if weights else None
        # Replay (n_train, per_epoch): indices from n_train on are a pool of which each
        # epoch draws per_epoch (methods/replay.py), mixed into the training examples.
        self.replay = replay
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.replay) if self.replay else len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.replay is not None:
            yield from self._with_replay(g)
        elif self.weights is not None:
            yield from torch.multinomial(
                self.weights, len(self.lengths), replacement=True, generator=g
            ).tolist()
        elif self.group_by_length and len(set(self.lengths)) > 1:
            from transformers.trainer_pt_utils import LengthGroupedSampler

            yield from LengthGroupedSampler(self.batch_size, lengths=self.lengths, generator=g)
        else:
            yield from torch.randperm(len(self.lengths), generator=g).tolist()

    def _with_replay(self, g: torch.Generator) -> Iterator[int]:
        """Every training example (or balanced draws) + per_epoch pool examples, drawn
        without replacement while the pool lasts, all shuffled together."""
        assert self.replay is not None
        n, k = self.replay
        pool = len(self.lengths) - n
        picks: list[int] = []
        while len(picks) < k:
            picks += torch.randperm(pool, generator=g)[: k - len(picks)].tolist()
        if self.weights is not None:
            own = torch.multinomial(self.weights[:n], n, replacement=True, generator=g).tolist()
        else:
            own = list(range(n))
        idx = own + [n + j for j in picks]
        lengths = [self.lengths[i] for i in idx]
        if self.group_by_length and len(set(lengths)) > 1:
            from transformers.trainer_pt_utils import LengthGroupedSampler

            order = list(LengthGroupedSampler(self.batch_size, lengths=lengths, generator=g))
        else:
            order = torch.randperm(len(idx), generator=g).tolist()
        yield from (idx[i] for i in order)


def param_groups(model: nn.Module, spec: TrainingSpec, groups: LayerGroups) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms (ndim < 2); the head at `head_lr`;
    with `layer_decay` d, block i of L gets lr * d**(L - i) and the embeddings d**(L + 1)
    (layer-wise learning-rate decay, Howard & Ruder 2018; Clark et al. 2020)."""
    lr = concrete(spec.lr, "training.lr")
    head_lr = concrete(spec.head_lr, "training.head_lr") or lr
    n_layers = len(groups.layers)

    def inside(name: str, prefix: str) -> bool:
        return f".{prefix}." in f".{name}."  # also under peft's base_model.model. prefix

    def lr_of(name: str) -> float:
        if any(inside(name, h) for h in groups.head):
            return head_lr
        if spec.layer_decay is None:
            return lr
        for i, layer in enumerate(groups.layers):
            if inside(name, layer):
                return lr * spec.layer_decay ** (n_layers - i)
        if any(inside(name, e) for e in groups.embeddings):
            return lr * spec.layer_decay ** (n_layers + 1)
        return lr  # pooler, final norm: top of the stack

    buckets: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        buckets.setdefault((p.ndim >= 2, lr_of(name)), []).append(p)
    return [
        {"params": ps, "weight_decay": spec.weight_decay if decay else 0.0, "lr": lr}
        for (decay, lr), ps in sorted(buckets.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]


@dataclass
class LoopState:
    """What callbacks see."""

    progress: Progress
    total_steps: int
    steps_per_epoch: int
    last_eval: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # every eval row
    model: nn.Module | None = None


@dataclass
class TrainSummary:
    seconds: float
    steps: int
    epochs: float
    samples_seen: int
    tokens_seen: int
    samples_per_second: float
    tokens_per_second: float
    precision: str
    device: str
    num_processes: int
    resumed_from: str | None
    history: list[dict[str, Any]]
    wall_seconds_before: float = 0.0  # spent by earlier attempts (to their last checkpoint)


# --------------------------------------------------------------------------- loop
class Loop:
    """One training run of `model` on `task` with `spec`, writing into `run_dir`."""

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        groups: LayerGroups,
        train_data: EncodedDataset,
        val_data: EncodedDataset | None,
        collate: Callable[[list[dict[str, Any]]], Batch],
        spec: TrainingSpec,
        eval_spec: EvaluationSpec,
        run_dir: Path,
        callbacks: list[Any] | None = None,
        save_checkpoints: bool = True,
        accelerator: Accelerator | None = None,
        train_eval_data: EncodedDataset | None = None,
        regularisers: list[Any] | None = None,
        evaluators: list[Any] | None = None,
        started: float | None = None,
    ) -> None:
        self.task, self.spec, self.eval_spec = task, spec, eval_spec
        self.run_dir, self.callbacks = run_dir, list(callbacks or [])
        self.train_data, self.val_data, self.collate = train_data, val_data, collate
        self.train_eval_data = train_eval_data  # a fixed training subset: the gap
        self.regularisers = list(regularisers or [])  # e.g. L2-SP toward the base weights
        self.evaluators = list(evaluators or [])  # model -> {name: value}, per validation
        self.save_checkpoints = save_checkpoints
        self.acc = accelerator or make_accelerator(spec)
        self.precision = self.acc.mixed_precision
        batch_size = concrete(spec.batch_size, "training.batch_size")
        self.sampler = EpochSampler(
            train_data.lengths,
            batch_size,
            spec.seed,
            spec.group_by_length,
            getattr(train_data, "sample_weights", None),
            getattr(train_data, "replay", None),  # methods/replay.py: ReplayMix
        )
        loader = DataLoader(
            train_data,
            batch_size=batch_size,
            sampler=self.sampler,
            collate_fn=collate,
            num_workers=spec.num_workers,
            drop_last=False,
            # Its own generator: creating an iterator must not draw from the global RNG,
            # or a resumed run's dropout masks drift from the uninterrupted run's.
            generator=torch.Generator().manual_seed(spec.seed),
        )
        optimizer = torch.optim.AdamW(
            param_groups(model, spec, groups),
            lr=concrete(spec.lr, "training.lr"),
            betas=spec.adam_betas,
            eps=spec.adam_eps,
            fused=self.acc.device.type == "cuda" or None,
        )
        self.model, self.optimizer, self.loader = self.acc.prepare(model, optimizer, loader)
        # The scheduler steps once per optimizer step, by us, at sync boundaries only.
        self.steps_per_epoch = max(1, math.ceil(len(self.loader) / spec.grad_accum))
        epochs = concrete(spec.epochs, "training.epochs")
        self.total_steps = spec.max_steps or max(1, math.ceil(epochs * self.steps_per_epoch))
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            "constant_with_warmup" if spec.scheduler == "constant" else spec.scheduler,
            self.optimizer,
            num_warmup_steps=round(
                concrete(spec.warmup_ratio, "training.warmup_ratio") * self.total_steps
            ),
            num_training_steps=self.total_steps,
        )
        self.progress = Progress()
        self.state = LoopState(self.progress, self.total_steps, self.steps_per_epoch)
        self.control = Control()
        self.metrics_file = run_dir / "metrics.jsonl"
        self.ckpt_dir = run_dir / "checkpoints"
        self._saved_step = -1
        self.resumed_from: str | None = None
        # Wall time counts from the attempt's start (the caller's `started`, set before model
        # loading) plus what earlier attempts had spent when their checkpoint was written.
        self.started = time.time() if started is None else started
        self.wall_before = 0.0

    # ----------------------------------------------------------------- helpers
    def _log_row(self, row: dict[str, Any]) -> None:
        if self.acc.is_main_process:
            with open(self.metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def _autocast_context(self) -> contextlib.AbstractContextManager[Any]:
        """CPU + bf16: PyTorch's default SDPA backward is ~4x slower than the math kernel."""
        if self.acc.device.type == "cpu" and self.precision == "bf16":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()

    def _eval_split(self, data: EncodedDataset, split: str, extra: bool = False) -> dict[str, Any]:
        with self._autocast_context():
            out = run_outputs(
                self.task,
                self.model,
                data,
                self.collate,
                self.spec.eval_batch_size,
                autocast=self.acc.autocast,
                device=self.acc.device,
            )
        p = self.progress
        row = {
            "split": split,
            "step": p.step,
            "epoch": round(p.epoch + p.batches_in_epoch / max(1, len(self.loader)), 4),
            **headline(self.task.metrics(out)),
        }
        if extra:  # e.g. retention of the base model's skills, beside validation
            with self._autocast_context(), self.acc.autocast():
                for evaluator in self.evaluators:
                    row.update(evaluator(self.acc.unwrap_model(self.model)))
        self._log_row(row)
        return row

    def evaluate(self) -> dict[str, Any]:
        """Validation (and training-subset) pass on every process: identical data, so no
        gather is needed. Rows go to metrics.jsonl and the callbacks' `state.last_eval`."""
        if self.val_data is None:
            return {}
        row = self._eval_split(self.val_data, "validation", extra=True)
        if self.train_eval_data is not None:
            train_row = self._eval_split(self.train_eval_data, "train_eval")
            row["train_eval"] = {
                k: v for k, v in train_row.items() if k not in ("split", "step", "epoch")
            }
        self.state.last_eval = row
        self.state.history.append(row)
        fire(self.callbacks, "on_evaluate", self.state, self.control)
        if self.control.should_save_best:
            self.control.should_save_best = False
            self.save_best(row)
        return row

    def save_best(self, row: dict[str, Any]) -> None:
        """Keep the current weights as checkpoints/best/ (atomic: temp folder + rename)."""
        full = self.acc.get_state_dict(self.model)
        state = checkpoint_state(self.acc.unwrap_model(self.model), full)
        if self.acc.is_main_process:
            save_best_weights(self.ckpt_dir, state, row)
        self.acc.wait_for_everyone()

    def restore_best(self) -> dict[str, Any] | None:
        """Load checkpoints/best/ into the model (before export); None when there is none."""
        return load_best_weights(self.ckpt_dir, self.acc.unwrap_model(self.model))

    def checkpoint(self) -> None:
        if not self.save_checkpoints or self._saved_step == self.progress.step:
            return
        self._saved_step = self.progress.step
        self.acc.wait_for_everyone()
        # get_state_dict runs on every rank: under FSDP/DeepSpeed it gathers the shards.
        full = self.acc.get_state_dict(self.model)
        state = checkpoint_state(self.acc.unwrap_model(self.model), full)
        engine = None
        if sharded_engine(self.acc):
            # GPU path (FSDP / DeepSpeed; not exercised on CPU CI, where FSDP falls back to
            # DDP): the optimizer state is sharded, so every rank writes its own part through
            # accelerate's save_state, into a folder all ranks name alike.
            engine = self.ckpt_dir / f".tmp-engine-{self.progress.step:08d}"
            self.acc.save_state(str(engine))
            self.acc.wait_for_everyone()
        rng = [rng_state()]
        if self.acc.num_processes > 1:  # every process's own stream, to rank 0 (by rank)
            from accelerate.utils import gather_object

            rng = gather_object(rng)
        if self.acc.is_main_process:
            self.progress.extra["history"] = self.state.history
            self.progress.wall_seconds = self.wall_before + time.time() - self.started
            path = save_checkpoint(
                self.ckpt_dir,
                state,
                self.optimizer,
                self.scheduler,
                self.progress,
                keep=self.spec.keep_checkpoints,
                scaler=self.acc.scaler,
                rng_states=rng,
                engine_dir=engine,
            )
            fire(self.callbacks, "on_checkpoint", self.state, self.control, path=path)
        self.acc.wait_for_everyone()

    def _drop_rows_after(self, step: int) -> None:
        """Rows logged after the checkpoint (before a crash) will be logged again."""
        if not self.acc.is_main_process or not self.metrics_file.is_file():
            return
        import os

        keep = [
            line
            for line in self.metrics_file.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        tmp = self.metrics_file.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, self.metrics_file)

    def resume(self, checkpoint: Path | None = None) -> Path | None:
        """Continue from `checkpoint` (default: the newest complete one in run_dir)."""
        path = checkpoint or latest_checkpoint(self.ckpt_dir)
        if path is None:
            return None
        has_engine = (path / ENGINE).is_dir()
        if has_engine != sharded_engine(self.acc):
            raise RunDirError(
                f"checkpoint {path} was written "
                + ("with" if has_engine else "without")
                + " a sharded optimizer (FSDP/DeepSpeed) and this launch is "
                + ("not " if has_engine else "")
                + "sharded; resume with the launch configuration the run started with"
            )
        self.progress = load_checkpoint(
            path,
            self.acc.unwrap_model(self.model),
            self.optimizer,
            self.scheduler,
            scaler=self.acc.scaler,
            rank=self.acc.process_index,
            engine=has_engine,
        )
        if has_engine:  # GPU path: each rank reads its optimizer/model shards, then our RNG
            self.acc.load_state(str(path / ENGINE))
            restore_rng(path, self.acc.process_index)
        self.state.progress = self.progress
        self.wall_before = self.progress.wall_seconds
        self.state.history = list(self.progress.extra.get("history", []))
        self._drop_rows_after(self.progress.step)
        self.resumed_from = str(path)
        log.info(
            "resumed from %s (step %d, epoch %d)", path, self.progress.step, self.progress.epoch
        )
        return path

    # ----------------------------------------------------------------- the loop
    def fit(self) -> TrainSummary:
        acc, spec, p = self.acc, self.spec, self.progress
        resumed_from = self.resumed_from
        if resumed_from is None:
            set_seed(spec.seed)  # dropout masks etc.; a resume restores the RNG instead
        self.state.model = self.model
        fire(self.callbacks, "on_train_begin", self.state, self.control)
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.total_steps,
            initial=p.step,
            disable=not acc.is_local_main_process,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        window_loss, window_n, window_samples, window_tokens = 0.0, 0, 0, 0
        window_start = time.perf_counter()
        grad_norm: float | None = None
        self.model.train()
        while p.step < self.total_steps and not self.control.should_stop:
            loader = self.loader
            if p.batches_in_epoch:
                loader = acc.skip_first_batches(self.loader, p.batches_in_epoch)
            # accelerate's loaders set the sampler's epoch from their own iteration counter,
            # which starts at 0 in a resumed process: pin both to the true epoch.
            for dl in (self.loader, loader):
                if hasattr(dl, "set_epoch"):
                    dl.set_epoch(p.epoch)
            self.sampler.set_epoch(p.epoch)
            if hasattr(self.train_data, "set_epoch"):  # e.g. text augmented per epoch
                self.train_data.set_epoch(p.epoch)
            if p.batches_in_epoch == 0:
                fire(self.callbacks, "on_epoch_begin", self.state, self.control)
            t0 = time.perf_counter()
            for batch in loader:
                with acc.accumulate(self.model), self._autocast_context():
                    loss = self.task.loss(self.model, batch)
                    if self.regularisers:  # e.g. L2-SP; nothing extra on the plain path
                        penalty = sum(reg.penalty() for reg in self.regularisers)
                        acc.backward(loss + penalty.to(loss.device))
                    else:
                        acc.backward(loss)
                    if acc.sync_gradients:
                        if spec.max_grad_norm is not None:
                            # DeepSpeed clips inside its engine and accelerate returns None.
                            norm = acc.clip_grad_norm_(self.model.parameters(), spec.max_grad_norm)
                            grad_norm = None if norm is None else float(norm)
                        self.optimizer.step()
                        self.scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                p.batches_in_epoch += 1
                n = len(next(iter(batch.values())))
                tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
                window_loss += float(loss.detach())
                window_n += 1
                window_samples += n * acc.num_processes
                window_tokens += tokens * acc.num_processes
                p.samples_seen += n * acc.num_processes
                p.tokens_seen += tokens * acc.num_processes
                if not acc.sync_gradients:
                    continue
                p.step += 1
                bar.update(1)
                if p.step % spec.log_every == 0 or p.step == self.total_steps:
                    dt = time.perf_counter() - window_start
                    row = {
                        "split": "train",
                        "step": p.step,
                        "epoch": round(p.epoch + p.batches_in_epoch / len(self.loader), 4),
                        "loss": window_loss / max(1, window_n),
                        "lr": self.scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm,
                        **({"penalty": float(penalty.detach())} if self.regularisers else {}),
                        "samples_per_second": window_samples / dt,
                        "tokens_per_second": window_tokens / dt,
                    }
                    self._log_row(row)
                    bar.set_postfix(
                        loss=f"{row['loss']:.4f}", sps=f"{row['samples_per_second']:.1f}"
                    )
                    window_loss, window_n, window_samples, window_tokens = 0.0, 0, 0, 0
                    window_start = time.perf_counter()
                fire(self.callbacks, "on_step_end", self.state, self.control)
                every = concrete(self.eval_spec.every_steps, "evaluation.every_steps")
                ckpt_every = concrete(spec.checkpoint_every, "training.checkpoint_every")
                paused = time.perf_counter()  # eval/checkpoint time is not training time
                if (every and p.step % every == 0) or self.control.should_evaluate:
                    self.control.should_evaluate = False
                    self.evaluate()
                    self.model.train()
                if (ckpt_every and p.step % ckpt_every == 0) or (self.control.should_checkpoint):
                    self.control.should_checkpoint = False
                    p.train_seconds += paused - t0  # up to date in the checkpoint
                    t0 = paused
                    self.checkpoint()
                paused = time.perf_counter() - paused
                t0 += paused
                window_start += paused
                if p.step >= self.total_steps or self.control.should_stop:
                    break
            p.train_seconds += time.perf_counter() - t0
            paused = time.perf_counter()
            epoch_done = p.batches_in_epoch >= len(self.loader)
            if epoch_done:
                p.epoch += 1
                p.batches_in_epoch = 0
            every = concrete(self.eval_spec.every_steps, "evaluation.every_steps")
            last_eval_step = self.state.history[-1]["step"] if self.state.history else -1
            if (not every and epoch_done) or (
                p.step >= self.total_steps and last_eval_step != p.step
            ):
                self.evaluate()
                self.model.train()
            if epoch_done:
                fire(self.callbacks, "on_epoch_end", self.state, self.control)
            final = p.step >= self.total_steps or self.control.should_stop
            if final or concrete(spec.checkpoint_each_epoch, "training.checkpoint_each_epoch"):
                self.checkpoint()
            window_start += time.perf_counter() - paused
        bar.close()
        fire(self.callbacks, "on_train_end", self.state, self.control)
        secs = max(p.train_seconds, 1e-9)
        return TrainSummary(
            seconds=p.train_seconds,
            steps=p.step,
            epochs=p.epoch + p.batches_in_epoch / max(1, len(self.loader)),
            samples_seen=p.samples_seen,
            tokens_seen=p.tokens_seen,
            samples_per_second=p.samples_seen / secs,
            tokens_per_second=p.tokens_seen / secs,
            precision=self.precision,
            device=str(acc.device),
            num_processes=acc.num_processes,
            resumed_from=resumed_from,
            history=self.state.history,
            wall_seconds_before=self.wall_before,
        )


def detect_device_type() -> str:
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def make_accelerator(spec: TrainingSpec) -> Accelerator:
    """One Accelerator per run; devices and distribution come from `accelerate launch`."""
    device_type = detect_device_type()
    if device_type == "cpu":
        # Denormals make fp32 CPU steps several times slower (GUIDE §5).
        torch.set_flush_denormal(True)
    mixed = resolve_precision(spec.precision, device_type)
    from accelerate.state import AcceleratorState, PartialState

    # accelerate keeps one process-wide state; a second run in the same Python process
    # (a compare ladder, a notebook) may want another precision. Single-process only:
    # under a launcher every run of the process must share one configuration.
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed) != mixed:
        if PartialState().num_processes > 1:
            raise RecipeError(
                f"training.precision={spec.precision}: this distributed process already runs "
                f"with mixed_precision={state.get('_mixed_precision')}; "
                "use one precision per launch"
            )
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed, gradient_accumulation_steps=spec.grad_accum)


def sharded_engine(acc: Accelerator) -> bool:
    """FSDP and DeepSpeed shard the optimizer state across ranks: it is saved and loaded
    through accelerate on every rank, not by the main process alone."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
