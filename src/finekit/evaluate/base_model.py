"""What the *base* model scores, to set the tuned model's numbers against.

- Classifiers get a new, random head, so the base model has no zero-shot prediction. Its
  stand-in is a **linear probe**: the frozen base model's features (the input of the
  classification head — exactly what `linear_probe` would train on) of the training rows ->
  scikit-learn `LogisticRegression`, applied to any evaluation rows. Its outputs have the
  task's own format (`probs`, `labels`), so the task's metrics and the per-slice code run
  on them unchanged.
- Language models (causal_lm, masked_lm, chat) are scored zero-shot on any rows with the
  task's own encode/eval_step (`score_rows`), e.g. perplexity per slice.

`base_view(model)` is the model as it was before the method's additions (a peft wrapper's
adapters disabled), so the base is measured right after `method.apply` as well.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from finekit.core.contracts import EncodedDataset, Task, capabilities
from finekit.evaluate.runner import run_outputs

log = logging.getLogger(__name__)


@contextlib.contextmanager
def base_view(model: nn.Module) -> Iterator[nn.Module]:
    """The model with a peft wrapper's adapters (LoRA, IA3, virtual tokens) switched off."""
    disable = getattr(model, "disable_adapter", None)
    with disable() if callable(disable) else contextlib.nullcontext():
        yield model


def has_probe(task: Task) -> bool:
    """Tasks whose base is a linear probe: classifiers (outputs `probs` over `labels`)."""
    return capabilities(task).classes is not None and task.head().kind.endswith("classification")


def _pool(x: torch.Tensor) -> torch.Tensor:
    """A head input as one vector per example: (B, H) as is, (B, T, H) -> the first token
    (what BERT/RoBERTa-style heads read), (B, C, H, W) -> mean over space."""
    x = x.detach().float()
    if x.dim() == 3:
        return x[:, 0]
    if x.dim() == 4:
        return x.mean((2, 3))
    return x.flatten(1)


def head_modules(model: nn.Module, head: list[str]) -> list[nn.Module]:
    """The family's head modules (`LayerGroups.head` names) inside a plain or peft-wrapped
    model; a forward pre-hook on them sees the head's input, the first one called (e.g.
    DistilBERT's pre_classifier) the pooled features. Also text mixup's hook point."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    modules = [inner.get_submodule(n) for n in head]
    if not modules:
        raise ValueError("the model family names no head modules")
    return modules


@torch.no_grad()
def head_inputs(
    task: Task,
    model: nn.Module,
    head: list[str],
    data: EncodedDataset,
    collate: Any,
    batch_size: int,
) -> np.ndarray:
    """(N, H) features the classification head receives, in the dataset's order, through a
    forward pre-hook on the head modules (the first one called, e.g. DistilBERT's
    pre_classifier); the task's own `eval_step` drives the forward pass."""
    modules = head_modules(model, head)
    captured: list[torch.Tensor] = []
    seen = [False]

    def hook(module: nn.Module, args: Any) -> None:
        if not seen[0] and args and torch.is_tensor(args[0]):
            seen[0] = True
            captured.append(_pool(args[0]).cpu())

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for i in range(0, len(data), batch_size):
            batch = collate([data[j] for j in range(i, min(i + batch_size, len(data)))])
            seen[0] = False
            task.eval_step(model, {k: v.to(device) for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return torch.cat(captured).numpy()


class LinearProbe:
    """Logistic regression on the frozen base model's head inputs (standardised), fitted
    once on the training rows; `outputs(data)` returns the task's `probs`/`labels`."""

    kind = "linear_probe"

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        head: list[str],
        train: EncodedDataset,
        collate: Any,
        batch_size: int,
        seed: int,
    ) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.task, self.model, self.head = task, model, head
        self.collate, self.batch_size = collate, batch_size
        self.num_labels = len(task.labels)  # type: ignore[attr-defined]
        x = self.features(train)
        y = np.array([f["labels"] for f in train.features])
        self.clf = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)
        )
        self.clf.fit(x, y)
        self.classes = self.clf.classes_.astype(int)

    def features(self, data: EncodedDataset) -> np.ndarray:
        plain = EncodedDataset(data.features, data.lengths)  # never augmented
        with base_view(self.model):
            return head_inputs(
                self.task, self.model, self.head, plain, self.collate, self.batch_size
            )

    def outputs(self, data: EncodedDataset) -> dict[str, torch.Tensor]:
        """The probe's per-example `probs` (all classes; unseen ones 0) and `labels`."""
        p = self.clf.predict_proba(self.features(data))
        probs = np.zeros((len(p), self.num_labels), dtype=np.float32)
        probs[:, self.classes] = p
        out = {"probs": torch.from_numpy(probs)}
        if data.features and "labels" in data.features[0]:
            out["labels"] = torch.tensor([f["labels"] for f in data.features])
        return out


def score_rows(
    task: Task,
    model: nn.Module,
    processor: Any,
    rows: pd.DataFrame,
    batch_size: int,
    split: str = "slice",
) -> dict[str, Any]:
    """The task's metrics of `model` on raw rows (encoded on their own: an LM's packed
    blocks then hold only these rows). Encoding bookkeeping for `split` is dropped, so
    run.json's data counts stay those of the real splits."""
    data = task.encode(rows.reset_index(drop=True), processor, split)
    task.forget_split(split)
    return task.metrics(run_outputs(task, model, data, task.collator(processor), batch_size))
