"""Regression on text: a one-output head on a pre-trained encoder, trained with MSE or
Huber on standardised targets; MAE, RMSE, Pearson, Spearman and R² in the target's unit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from sklearn.model_selection import KFold
from torch import nn

from finekit.core.contracts import Batch, EncodedDataset, HeadSpec, Prepared
from finekit.data.readers import require_columns
from finekit.data.splits import Splits
from finekit.errors import DataError, RecipeError
from finekit.recipe import Recipe
from finekit.recipe.auto import setting
from finekit.tasks.regress.config import RegressConfig

log = logging.getLogger(__name__)
# Errors first (lower is better), then agreement (higher is better); `loss` is the
# training objective on standardised targets.
METRICS = ("rmse", "mae", "spearman", "pearson", "r2", "loss")


class RegressTask:
    """A number per text (or text pair)."""

    name = "regress"
    size_unit = "training examples"
    metric_names: tuple[str, ...] = METRICS

    def __init__(self, config: RegressConfig) -> None:
        self.config = config
        self.text_column, self.target_column = "text", "label"
        self.pair_column: str | None = None
        self.max_length = 128
        self.mean, self.std = 0.0, 1.0  # of the training targets (standardisation)
        self.low, self.high = -np.inf, np.inf  # the training targets' range
        self.truncation: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ data
    def prepare(self, splits: Splits, recipe: Recipe) -> Prepared:
        d = recipe.data
        self.text_column, self.pair_column = d.text_column, d.text_pair_column
        self.target_column, self.max_length = (
            d.label_column,
            setting(recipe, "training.max_length"),
        )
        if recipe.evaluation.metric not in self.metric_names:
            raise RecipeError(
                f"evaluation.metric={recipe.evaluation.metric!r} is not a regress metric; "
                f"allowed: {', '.join(self.metric_names)}"
            )
        checked = {s: self._check(df, splits.sources.get(s, s), True) for s, df in splits.items()}
        train, val, test = checked["train"], checked.get("validation"), checked.get("test")
        src, seed = splits.sources["train"], recipe.training.seed
        sources = dict(splits.sources)
        if test is None and d.test_fraction > 0:
            train, test = _holdout(train, d.test_fraction, seed)
            sources["test"] = f"{d.test_fraction:.0%} held out of {src}"
        if d.folds is not None:
            folds = KFold(d.folds.k, shuffle=True, random_state=seed).split(train)
            keep, held = list(folds)[d.folds.index]
            train, val = train.iloc[keep].reset_index(drop=True), train.iloc[held]
            sources["validation"] = f"fold {d.folds.index + 1} of {d.folds.k} of {src}"
        elif val is None and d.validation_fraction > 0:
            train, val = _holdout(train, d.validation_fraction, seed)
            sources["validation"] = f"{d.validation_fraction:.0%} held out of {src}"
        if d.max_train_samples is not None and len(train) > d.max_train_samples:
            train = train.sample(n=d.max_train_samples, random_state=seed).reset_index(drop=True)
        y = train[self.target_column].to_numpy(dtype=np.float64)
        if len(y) < 2 or float(y.std()) == 0.0:
            raise DataError(
                f"{src}: column {self.target_column!r} needs at least two different values "
                f"to learn from; the training rows have {sorted(set(y.tolist()))[:3]}"
            )
        if self.config.standardize:
            self.mean, self.std = float(y.mean()), float(y.std())
        self.low, self.high = float(y.min()), float(y.max())
        out = Splits(train=train, validation=val, test=test, sources=sources)
        return Prepared(
            splits=out,
            info={
                "target": self.target_column,
                "target_train": {
                    "mean": float(y.mean()),
                    "std": float(y.std()),
                    "min": self.low,
                    "max": self.high,
                },
                "standardized": self.config.standardize,
                "rows": {s: int(len(df)) for s, df in out.items()},
                "sources": sources,
            },
        )

    def _check(self, df: pd.DataFrame, source: str, with_target: bool) -> pd.DataFrame:
        """Input columns present and non-empty; targets numbers (named rows otherwise)."""
        fields = {self.text_column: "data.text_column"}
        if self.pair_column:
            fields[self.pair_column] = "data.text_pair_column"
        if with_target:
            fields[self.target_column] = "data.label_column"
        require_columns(df, source, fields)
        if not with_target:
            return df
        values = pd.to_numeric(df[self.target_column], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
        if bad.any():
            rows = (np.flatnonzero(bad.to_numpy())[:5] + 1).tolist()
            shown = df[self.target_column][bad].astype(str).head(3).tolist()
            raise DataError(
                f"{source}: column {self.target_column!r} must hold numbers for task regress; "
                f"{int(bad.sum())} row(s) do not (data rows {rows}: {shown})"
            )
        return df.assign(**{self.target_column: values.astype(np.float64)}).reset_index(drop=True)

    def train_size(self, info: dict[str, Any]) -> int | None:
        rows = info.get("rows") or {}
        return int(rows["train"]) if "train" in rows else None

    def head(self) -> HeadSpec:
        return HeadSpec(
            kind="sequence-classification",
            num_labels=1,
            id2label={0: self.target_column},
            problem_type="regression",
        )

    def input_lengths(self, df: pd.DataFrame, processor: Any) -> list[int]:
        texts = df[self.text_column].astype(str).tolist()
        pairs = df[self.pair_column].astype(str).tolist() if self.pair_column else None
        full = processor(texts, pairs, truncation=False, add_special_tokens=True, verbose=False)
        return [len(ids) for ids in full["input_ids"]]

    def encode(self, df: pd.DataFrame, processor: Any, split: str) -> EncodedDataset:
        texts = df[self.text_column].astype(str).tolist()
        pairs = df[self.pair_column].astype(str).tolist() if self.pair_column else None
        full = processor(texts, pairs, truncation=False, add_special_tokens=True, verbose=False)
        lengths = [len(ids) for ids in full["input_ids"]]
        over = [n - self.max_length for n in lengths if n > self.max_length]
        self.truncation[split] = {
            "examples": len(over),
            "share_of_examples": len(over) / max(1, len(lengths)),
            "tokens_lost": sum(over),
            "share_of_tokens_lost": sum(over) / max(1, sum(lengths)),
            "max_length": self.max_length,
        }
        if over:
            log.warning(
                "%s: %d of %d texts exceed max_length=%d tokens and are truncated; raise "
                "training.max_length to keep them",
                split,
                len(over),
                len(lengths),
                self.max_length,
            )
        enc = processor(texts, pairs, truncation=True, max_length=self.max_length) if over else full
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        targets = (
            ((df[self.target_column].to_numpy(dtype=np.float64) - self.mean) / self.std).tolist()
            if self.target_column in df.columns
            else None
        )
        feats = []
        for i in range(len(texts)):
            f: dict[str, Any] = {k: enc[k][i] for k in keys}
            if targets is not None:
                f["labels"] = float(targets[i])
            feats.append(f)
        return EncodedDataset(feats, [len(f["input_ids"]) for f in feats])

    def collator(self, processor: Any) -> Callable[[list[dict[str, Any]]], Batch]:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(processor, return_tensors="pt")

    def encoding_record(self) -> dict[str, Any]:
        return self.truncation

    def forget_split(self, split: str) -> None:
        self.truncation.pop(split, None)

    # ------------------------------------------------------------------ steps
    def _forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return model(**inputs).logits.float().squeeze(-1)  # (B,) standardised

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        pred, y = self._forward(model, batch), batch["labels"].float()
        if self.config.loss == "huber":
            return F.huber_loss(pred, y, delta=self.config.huber_delta)
        return F.mse_loss(pred, y)

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        out = {"preds": self._forward(model, batch)}
        if "labels" in batch:
            out["labels"] = batch["labels"].float()
        return out

    def _unit(self, z: torch.Tensor) -> np.ndarray:
        """Standardised outputs back in the target's unit (clipped where asked)."""
        y = z.double().cpu().numpy() * self.std + self.mean
        return np.clip(y, self.low, self.high) if self.config.clip_to_train_range else y

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        pred, true = self._unit(outputs["preds"]), self._unit(outputs["labels"])
        if self.config.clip_to_train_range:  # the true values are never clipped
            true = outputs["labels"].double().cpu().numpy() * self.std + self.mean
        z = (outputs["preds"].double() - outputs["labels"].double()).cpu()
        loss = (
            F.huber_loss(z, torch.zeros_like(z), delta=self.config.huber_delta)
            if self.config.loss == "huber"
            else z.pow(2).mean()
        )
        varied = len(pred) > 1 and np.ptp(pred) > 0 and np.ptp(true) > 0
        return {
            "rmse": float(root_mean_squared_error(true, pred)),
            "mae": float(mean_absolute_error(true, pred)),
            "spearman": float(spearmanr(true, pred).statistic) if varied else float("nan"),
            "pearson": float(pearsonr(true, pred).statistic) if varied else float("nan"),
            "r2": float(r2_score(true, pred)) if len(true) > 1 else float("nan"),
            "loss": float(loss),
            "examples": len(true),
        }

    def artifacts(
        self,
        outputs: dict[str, torch.Tensor],
        out_dir: Path,
        split: str,
        rows: pd.DataFrame | None = None,
    ) -> list[str]:
        """A scatter of predicted against true values, and every prediction as CSV."""
        pred = self._unit(outputs["preds"])
        files = []
        if "labels" in outputs:
            true = outputs["labels"].double().cpu().numpy() * self.std + self.mean
            name = f"scatter_{split}.png"
            _scatter(true, pred, self.target_column, split, out_dir / name)
            files.append(name)
        if rows is not None and len(rows) == len(pred):
            cols = [c for c in (self.text_column, self.pair_column) if c]
            table = rows[cols].copy().reset_index(drop=True)
            if self.target_column in rows.columns:
                table[self.target_column] = rows[self.target_column].to_numpy()
            table["predicted"] = pred
            name = f"predictions_{split}.csv"
            table.to_csv(out_dir / name, index=False)
            files.append(name)
        return files

    # ------------------------------------------------------------------ inference
    def read_inputs(self, df: pd.DataFrame, source: str, with_labels: bool = False) -> pd.DataFrame:
        return self._check(df, source, with_labels)

    def predict(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame, batch_size: int
    ) -> list[dict[str, Any]]:
        from finekit.evaluate.runner import run_outputs

        ds = self.encode(
            rows.drop(columns=[self.target_column], errors="ignore"), processor, "predict"
        )
        self.forget_split("predict")
        out = run_outputs(self, model, ds, self.collator(processor), batch_size)
        return [{"value": float(v)} for v in self._unit(out["preds"])]

    def state(self) -> dict[str, Any]:
        return {
            "text_column": self.text_column,
            "text_pair_column": self.pair_column,
            "target_column": self.target_column,
            "max_length": self.max_length,
            "mean": self.mean,
            "std": self.std,
            "low": self.low,
            "high": self.high,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.text_column, self.pair_column = state["text_column"], state["text_pair_column"]
        self.target_column, self.max_length = state["target_column"], int(state["max_length"])
        self.mean, self.std = float(state["mean"]), float(state["std"])
        self.low, self.high = float(state["low"]), float(state["high"])


def _holdout(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded random share of the rows held out (targets are numbers: no strata)."""
    held = df.sample(frac=fraction, random_state=seed)
    return df.drop(held.index).reset_index(drop=True), held.reset_index(drop=True)


def _scatter(true: np.ndarray, pred: np.ndarray, target: str, split: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=110)
    ax.scatter(true, pred, s=8, alpha=0.4, linewidths=0)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=1, ls="--", label="predicted = true")
    ax.set_xlabel(f"true {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.set_title(f"{split}: {len(true)} examples")
    ax.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
