"""Task `classify` on text (any HF encoder); images are `image.py`, and what both share
is `common.py`.

Labels come from a column of strings or ints; their names travel into the exported
model's config (`id2label`). Inputs longer than `training.max_length` are counted and
reported (how many, what share of tokens is lost), never cut silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from finekit.core.contracts import Batch, EncodedDataset, HeadSpec, Prepared, ReportSection
from finekit.data.augment import resolve_augment
from finekit.data.augment.features import FeatureMixup
from finekit.data.augment.text import EdaSettings, eda, example_rng
from finekit.data.readers import require_columns
from finekit.data.splits import Splits
from finekit.recipe import Recipe
from finekit.recipe.auto import setting
from finekit.tasks.classify.common import (
    as_label,
    check_metric,
    check_seen,
    label_metrics,
    named,
    split_labelled,
    top_labels,
    train_rows,
)
from finekit.tasks.classify.config import ClassifyConfig

log = logging.getLogger(__name__)
METRICS = ("accuracy", "macro_f1", "weighted_f1", "loss")  # headline metrics it reports


class ClassifyTask:
    """Text classification (sequence classification head)."""

    name = "classify"
    metric_names: tuple[str, ...] = METRICS

    def __init__(self, config: ClassifyConfig) -> None:
        self.config = config
        self.labels: list[str] = []
        self.text_column = "text"
        self.pair_column: str | None = None
        self.label_column = "label"
        self.max_length = 128
        self.truncation: dict[str, dict[str, Any]] = {}
        # EDA on training texts (data.augment), re-tokenised per example; None = off.
        self.text_augment: EdaSettings | None = None
        # Sentence-level mixup at the head input (data.augment.mixup); None = off.
        self.text_mix: FeatureMixup | None = None
        self.head_modules: list[nn.Module] | None = None  # set by `attach`
        self.seed = 42

    def encoding_record(self) -> dict[str, Any]:
        return self.truncation

    def forget_split(self, split: str) -> None:
        self.truncation.pop(split, None)

    # ------------------------------------------------------------------ data
    def prepare(self, splits: Splits, recipe: Recipe) -> Prepared:
        d = recipe.data
        self.text_column, self.pair_column, self.label_column = (
            d.text_column,
            d.text_pair_column,
            d.label_column,
        )
        self.max_length = setting(recipe, "training.max_length")
        self.seed = recipe.training.seed
        eda = EdaSettings.from_spec(d.augment)
        self.text_augment = eda if eda.active else None
        self.text_mix = FeatureMixup.from_spec(d.augment)
        check_metric(recipe, self.metric_names)
        out, self.labels, info = split_labelled(
            splits,
            recipe,
            self.label_column,
            self.config.label_names,
            lambda df, source: self._check(df, source, with_labels=True),
        )
        augment = (
            {"preset": d.augment.preset, **resolve_augment(d.augment, "text")}
            if self.text_augment or self.text_mix
            else {}
        )
        if self.text_mix is not None:
            augment["mixup_alpha"] = self.text_mix.alpha
        return Prepared(splits=out, info={**({"augment": augment} if augment else {}), **info})

    def _check(self, df: pd.DataFrame, source: str, with_labels: bool) -> None:
        fields = {self.text_column: "data.text_column"}
        if self.pair_column:
            fields[self.pair_column] = "data.text_pair_column"
        if with_labels:
            fields[self.label_column] = "data.label_column"
        require_columns(df, source, fields)

    size_unit = "training examples"

    def train_size(self, info: dict[str, Any]) -> int | None:
        return train_rows(info)

    def head(self) -> HeadSpec:
        return HeadSpec(
            kind="sequence-classification",
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
        )

    # ------------------------------------------------------------------ features
    def _texts(self, df: pd.DataFrame) -> tuple[list[str], list[str] | None]:
        texts = df[self.text_column].astype(str).tolist()
        pairs = df[self.pair_column].astype(str).tolist() if self.pair_column else None
        return texts, pairs

    def input_lengths(self, df: pd.DataFrame, processor: Any) -> list[int]:
        texts, pairs = self._texts(df)
        full = processor(texts, pairs, truncation=False, add_special_tokens=True, verbose=False)
        return [len(ids) for ids in full["input_ids"]]

    def encode(self, df: pd.DataFrame, processor: Any, split: str) -> EncodedDataset:
        texts, pairs = self._texts(df)
        full = processor(texts, pairs, truncation=False, add_special_tokens=True, verbose=False)
        lengths = [len(ids) for ids in full["input_ids"]]
        over = [i for i, n in enumerate(lengths) if n > self.max_length]
        lost = sum(lengths[i] - self.max_length for i in over)
        self.truncation[split] = {
            "examples": len(over),
            "share_of_examples": len(over) / max(1, len(lengths)),
            "tokens_lost": lost,
            "share_of_tokens_lost": lost / max(1, sum(lengths)),
            "max_length": self.max_length,
        }
        if over:
            log.warning(
                "%s: %d of %d texts exceed max_length=%d tokens and are truncated "
                "(%.1f%% of tokens lost); raise training.max_length to keep them",
                split,
                len(over),
                len(lengths),
                self.max_length,
                100 * self.truncation[split]["share_of_tokens_lost"],
            )
            enc = processor(texts, pairs, truncation=True, max_length=self.max_length)
        else:
            enc = full
        index = {name: i for i, name in enumerate(self.labels)}
        labels = (
            [index[v] for v in as_label(df[self.label_column])]
            if self.label_column in df.columns
            else None
        )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        feats = []
        for i in range(len(texts)):
            f = {k: enc[k][i] for k in keys}
            if labels is not None:
                f["labels"] = labels[i]
            feats.append(f)
        plain = EncodedDataset(feats, [len(f["input_ids"]) for f in feats])
        if split != "train" or self.text_augment is None:
            return plain

        def tokenize(i: int, text: str) -> dict[str, Any]:
            pair = pairs[i] if pairs is not None else None
            enc = processor(text, pair, truncation=True, max_length=self.max_length)
            return {k: enc[k] for k in keys}

        return AugmentedTexts(plain, texts, self.text_augment, self.seed, tokenize)

    def collator(self, processor: Any) -> Callable[[list[dict[str, Any]]], Batch]:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(processor, return_tensors="pt")

    # ------------------------------------------------------------------ steps
    def attach(self, model: nn.Module, head: list[str]) -> None:
        """Optional hook (api.py, after method.apply): text mixup finds the head modules."""
        if self.text_mix is not None:
            from finekit.evaluate.base_model import head_modules

            self.head_modules = head_modules(model, head)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        ls = self.config.label_smoothing
        # Mixup draws in training only (EWC's Fisher calls this loss in eval mode).
        mix = self.text_mix.draw(len(labels)) if self.text_mix and model.training else None
        if mix is None:
            logits = model(**inputs).logits
            # Loss in fp32 under autocast: log-softmax over many classes loses bits in bf16.
            return F.cross_entropy(logits.float(), labels, label_smoothing=ls)
        if self.head_modules is None:
            raise RuntimeError("classify: data.augment.mixup needs task.attach(model, head)")
        assert self.text_mix is not None
        with self.text_mix.applied(self.head_modules, mix):
            logits = model(**inputs).logits.float()
        partner = labels[mix.perm.to(labels.device)]
        la = F.cross_entropy(logits, labels, label_smoothing=ls)
        lb = F.cross_entropy(logits, partner, label_smoothing=ls)
        return mix.lam * la + (1.0 - mix.lam) * lb

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float()
        out = {"probs": logits.softmax(-1)}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        return label_metrics(outputs, self.labels)

    def artifacts(
        self,
        outputs: dict[str, torch.Tensor],
        out_dir: Path,
        split: str,
        rows: pd.DataFrame | None = None,
    ) -> list[str]:
        from finekit.evaluate.plots import plot_confusion_matrix

        probs = outputs["probs"]
        preds = probs.argmax(-1).cpu().numpy()
        if rows is not None and len(rows) == len(preds):
            # Per-example predictions: what the report's worst-confused pairs quote.
            pd.DataFrame(
                {
                    "text": rows[self.text_column].astype(str).tolist(),
                    **(
                        {"text_pair": rows[self.pair_column].astype(str).tolist()}
                        if self.pair_column
                        else {}
                    ),
                    "label": [self.labels[int(i)] for i in outputs["labels"]],
                    "predicted": [self.labels[int(i)] for i in preds],
                    "confidence": probs.max(-1).values.numpy().round(5),
                }
            ).to_csv(out_dir / f"predictions_{split}.csv", index=False)
        name = f"confusion_matrix_{split}.png"
        plot_confusion_matrix(
            outputs["labels"].cpu().numpy(),
            preds,
            self.labels,
            out_dir / name,
            title=f"Confusion matrix ({split})",
        )
        files = [name]
        if (out_dir / f"predictions_{split}.csv").exists():
            files.append(f"predictions_{split}.csv")
        return files

    # ------------------------------------------------------------------ inference
    def read_inputs(self, df: pd.DataFrame, source: str, with_labels: bool = False) -> pd.DataFrame:
        self._check(df, source, with_labels=with_labels)
        if with_labels:
            df = named(df, self.label_column, self.config.label_names)
            check_seen(df, self.labels, self.label_column, source, "the training data")
        return df

    def predict(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame, batch_size: int
    ) -> list[dict[str, Any]]:
        from finekit.evaluate.runner import run_outputs

        ds = self.encode(
            rows.drop(columns=[self.label_column], errors="ignore"), processor, "predict"
        )
        self.forget_split("predict")
        out = run_outputs(self, model, ds, self.collator(processor), batch_size)
        return top_labels(out["probs"], self.labels)

    def report_sections(
        self, run_dir: Path, recipe: Recipe, run: dict[str, Any]
    ) -> list[ReportSection]:
        """Data summary with a leakage check, per-class metrics, worst confusions."""
        from finekit.tasks.classify.report import sections

        return sections(self, run_dir, recipe, run)

    def state(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "text_column": self.text_column,
            "text_pair_column": self.pair_column,
            "label_column": self.label_column,
            "max_length": self.max_length,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])
        self.text_column = state["text_column"]
        self.pair_column = state.get("text_pair_column")
        self.label_column = state["label_column"]
        self.max_length = int(state["max_length"])


class AugmentedTexts(EncodedDataset):
    """Training examples whose text (not the pair) is augmented afresh each epoch by EDA,
    then re-tokenised; validation, train_eval, test and predict never see this class.

    `features` and `lengths` stay the plain encodings (length grouping and the train_eval
    subset read them); `__getitem__` returns an augmented example's new tokens with its
    label. The augmentation of example i in epoch e depends on (seed, e, i) only, so a
    resumed run replays it exactly; the loop calls `set_epoch` before each epoch.
    """

    def __init__(
        self,
        plain: EncodedDataset,
        texts: list[str],
        settings: EdaSettings,
        seed: int,
        tokenize: Callable[[int, str], dict[str, Any]],
    ) -> None:
        super().__init__(plain.features, plain.lengths)
        self.texts, self.settings, self.seed, self.tokenize = texts, settings, seed, tokenize
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def text(self, i: int) -> str:
        """Example i's text as training sees it this epoch."""
        return eda(self.texts[i], self.settings, example_rng(self.seed, self.epoch, i))

    def __getitem__(self, i: int) -> dict[str, Any]:
        text = self.text(i)
        if text == self.texts[i]:
            return self.features[i]  # not augmented this epoch: the plain tokens
        return {**self.features[i], **self.tokenize(i, text)}
