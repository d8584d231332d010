"""Task `masked_lm`: continued (domain-adaptive) pre-training of an encoder by masked
language modelling (Devlin et al. 2019; Gururangan et al. 2020, "Don't stop pretraining").

The corpus is read, held out and packed as in `causal_lm` (documents joined with the
separator, cut into blocks, each block wrapped in the tokenizer's own special tokens).
Training masks 15% of the tokens **dynamically**, a new draw every time a block is seen
(RoBERTa's choice), with BERT's 80/10/10 rule through transformers'
`DataCollatorForLanguageModeling.torch_mask_tokens`; the draw happens in `loss` from torch's
global RNG, which the loop seeds and checkpoints, so a resumed run masks exactly as the
uninterrupted one. Evaluation masks each block by a seed derived from its own tokens: the
same positions before and after training, whatever the batching, so perplexities compare.

Metrics: masked-token perplexity (exp of the mean NLL on the masked tokens) on the
held-out domain text, before and after; retention is the **pseudo-perplexity** (Salazar et
al. 2020: every token masked in turn) of finekit's general-English reference, before and
after. The exported model is an `AutoModelForMaskedLM` folder, and a valid base for
`classify` (its encoder weights load into `AutoModelForSequenceClassification`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from finekit.core.contracts import Batch, EncodedDataset, HeadSpec, Prepared, ReportSection
from finekit.data.splits import Splits
from finekit.errors import DataError, ModelError
from finekit.evaluate.retention import pseudo_perplexity, reference_sentences, special_frame
from finekit.recipe import Recipe, TaskConfig
from finekit.recipe.auto import Proposals, concrete
from finekit.tasks.lm.causal import (
    IGNORE,
    METRICS,
    cap_blocks,
    check_corpus,
    corpus_rules,
    cut_blocks,
    document_lengths,
    lm_metrics,
    pad_token_id,
    perplexity_before,
    perplexity_report,
    prepare_corpus,
    reference_blocks,
    tokenize,
    trained_blocks,
)


class MaskedLMConfig(TaskConfig):
    """Options of `masked_lm`."""

    name: str = "masked_lm"

    default_metric: ClassVar[str] = "perplexity"  # on the masked tokens

    def length_fields(self) -> dict[str, int]:
        return {"task.block_size": self.block_size}

    def auto_defaults(self, p: Proposals) -> None:
        corpus_rules(p, self.block_size, "masked")

    # Tokens per block including the special tokens; 128 keeps BERT-size encoders fast on
    # CPU, 512 is BERT's pre-training length.
    block_size: int = Field(128, ge=8, le=8192)
    # true: concatenate documents (a separator between them) and cut into full blocks;
    # false: each document is cut into its own blocks.
    packing: bool = True
    # Share of tokens chosen for prediction per block (BERT/RoBERTa: 0.15).
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)
    # Of the chosen tokens: replaced by [MASK] / by a random token; the rest stay as they
    # are (BERT's 80/10/10).
    mask_replace_prob: float = Field(0.8, ge=0.0, le=1.0)
    random_replace_prob: float = Field(0.1, ge=0.0, le=1.0)
    # `predict`: how many candidates per [MASK] in a fill-mask query.
    top_k: int = Field(5, ge=1, le=100)


class MaskedLMTask:
    """Masked-token prediction on plain text (masked-lm head). Reading, hold-outs, token
    counts and the before/after report are the LM functions `causal_lm` uses too; blocks,
    masking, loss and retention are its own."""

    name = "masked_lm"
    size_unit = "training token blocks"
    metric_names: tuple[str, ...] = METRICS
    general_key = "general_pseudo_perplexity"
    perplexity_note = (
        "Perplexity = exp(mean NLL on the masked tokens), the same seeded masks before and "
        "after; general English: pseudo-perplexity (every token masked in turn)."
    )

    def __init__(self, config: MaskedLMConfig) -> None:
        self.config = config
        self.text_column = "text"
        self.seed = 42
        self.max_train_blocks: int | None = None
        self.counts: dict[str, dict[str, int]] = {}  # split -> documents/tokens/blocks
        self._masker: Any = None

    def encoding_record(self) -> dict[str, Any]:
        return {}  # blocks are cut, not truncated; the counts are in `data.tokens`

    def forget_split(self, split: str) -> None:
        self.counts.pop(split, None)

    # ------------------------------------------------------------------ data
    def prepare(self, splits: Splits, recipe: Recipe) -> Prepared:
        self.text_column = recipe.data.text_column
        self.seed = recipe.training.seed
        self.max_train_blocks = recipe.data.max_train_samples
        return prepare_corpus(self, splits, recipe)

    def train_size(self, info: dict[str, Any]) -> int | None:
        return trained_blocks(info)

    def head(self) -> HeadSpec:
        return HeadSpec(kind="masked-lm")

    # ------------------------------------------------------------------ features
    def input_lengths(self, df: pd.DataFrame, processor: Any) -> list[int]:
        return document_lengths(processor, df[self.text_column].fillna("").astype(str).tolist())

    def encode(self, df: pd.DataFrame, processor: Any, split: str) -> EncodedDataset:
        """Blocks of `block_size` tokens: [CLS] ... [SEP] (or the tokenizer's own pair),
        documents separated by the separator token inside a packed block."""
        if self._masker is None:  # fails early for a tokenizer without a mask token
            self._masker = self._make_masker(processor)
        prefix, suffix = special_frame(processor)
        sep = getattr(processor, "sep_token_id", None)
        sep = sep if sep is not None else getattr(processor, "eos_token_id", None)
        inner = self.config.block_size - len(prefix) - len(suffix)
        if inner < 2:
            raise DataError(f"task.block_size={self.config.block_size} leaves no room for text")
        texts = [t for t in df[self.text_column].fillna("").astype(str).tolist() if t.strip()]
        docs = tokenize(processor, texts)
        pieces, dropped = cut_blocks(
            docs,
            inner,
            sep=sep,
            packing=self.config.packing,
            keep_rest=split != "train",
            min_len=1,
            sep_unpacked=False,
        )
        if not pieces:
            n = sum(len(x) for x in docs)
            raise DataError(
                f"{split}: the text has {n} tokens, fewer than a block of {inner} (task."
                f"block_size={self.config.block_size} minus special tokens); lower "
                "task.block_size or add text"
            )
        if split == "train":
            pieces = cap_blocks(pieces, self.max_train_blocks, self.seed)
        feats = []
        for p in pieces:
            ids = [*prefix, *p, *suffix]
            special = [1] * len(prefix) + [0] * len(p) + [1] * len(suffix)
            feats.append({"input_ids": ids, "special_tokens_mask": special})
        self.counts[split] = {
            "documents": len(docs),
            "tokens": sum(len(f["input_ids"]) for f in feats),
            "blocks": len(feats),
            "tokens_dropped": dropped,
        }
        return EncodedDataset(feats, [len(f["input_ids"]) for f in feats])

    def collator(self, processor: Any) -> Callable[[list[dict[str, Any]]], Batch]:
        self._masker = self._make_masker(processor)
        return SpecialMaskCollator(pad_token_id(processor))

    def _make_masker(self, processor: Any) -> Any:
        from transformers import DataCollatorForLanguageModeling

        if getattr(processor, "mask_token", None) is None:
            raise ModelError(
                "masked_lm: the tokenizer has no mask token; masked language modelling needs "
                "an encoder tokenizer (BERT, RoBERTa...) — use task causal_lm for decoders"
            )
        c = self.config
        return DataCollatorForLanguageModeling(
            processor,
            mlm=True,
            mlm_probability=c.mlm_probability,
            mask_replace_prob=c.mask_replace_prob,
            random_replace_prob=c.random_replace_prob,
        )

    def _mask(
        self, batch: Batch, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT masking of a batch on the CPU (the library's rule), returned on its device."""
        if self._masker is None:
            raise ModelError("masked_lm: collator() must be built before masking")
        device = batch["input_ids"].device
        self._masker.generator = generator  # None: torch's global RNG (seeded by the loop)
        ids, labels = self._masker.torch_mask_tokens(
            batch["input_ids"].detach().cpu().clone(),
            special_tokens_mask=batch["special_tokens_mask"].detach().cpu().bool(),
        )
        self._masker.generator = None
        return ids.to(device), labels.to(device)

    def _fixed_mask(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation masks: each row by a seed from its own tokens (batching-independent,
        identical before and after training, and never touching the training RNG)."""
        rows_ids, rows_labels = [], []
        width = batch["input_ids"].shape[1]
        for i in range(batch["input_ids"].shape[0]):
            row = batch["input_ids"][i : i + 1].detach().cpu()
            seed = zlib.crc32(row.numpy().tobytes()) ^ self.seed
            g = torch.Generator().manual_seed(seed)
            ids, labels = self._mask(
                {"input_ids": row, "special_tokens_mask": batch["special_tokens_mask"][i : i + 1]},
                g,
            )
            rows_ids.append(ids[:, :width])
            rows_labels.append(labels[:, :width])
        device = batch["input_ids"].device
        return torch.cat(rows_ids).to(device), torch.cat(rows_labels).to(device)

    # ------------------------------------------------------------------ steps
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        ids, labels = self._mask(batch, None)  # a fresh draw each time a block is seen
        nll, n = masked_nll(model, ids, batch["attention_mask"], labels)
        return nll.sum() / n.sum().clamp_min(1)

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        ids, labels = self._fixed_mask(batch)
        nll, n = masked_nll(model, ids, batch["attention_mask"], labels)
        return {"nll": nll.detach(), "tokens": n}

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        return lm_metrics(outputs)  # perplexity here = exp(mean NLL on masked tokens)

    def artifacts(
        self,
        outputs: dict[str, torch.Tensor],
        out_dir: Path,
        split: str,
        rows: pd.DataFrame | None = None,
    ) -> list[str]:
        return []  # eval/<split>.json already holds the numbers

    # ------------------------------------------------------------------ before
    def baseline(
        self, model: nn.Module, processor: Any, encoded: dict[str, EncodedDataset], batch_size: int
    ) -> dict[str, dict[str, Any]]:
        """The base model's perplexity on the masked tokens of each evaluation split."""
        return perplexity_before(self, model, processor, encoded, batch_size)

    def fisher_data(self, processor: Any, recipe: Recipe) -> EncodedDataset:
        """EWC's reference set (`training.ewc`): general English, the skill to keep."""
        return reference_blocks(self, processor, recipe.evaluation.retention_reference)

    # ------------------------------------------------------------------ retention
    def retention(self, model: nn.Module, processor: Any, recipe: Recipe) -> PseudoPerplexity:
        """Forgetting of general English: pseudo-perplexity on finekit's reference."""
        return PseudoPerplexity(
            model,
            processor,
            recipe.evaluation.retention_reference,
            recipe.training.eval_batch_size,
            concrete(recipe.training.max_length, "training.max_length"),
        )

    # ------------------------------------------------------------------ inference
    def read_inputs(self, df: pd.DataFrame, source: str, with_labels: bool = False) -> pd.DataFrame:
        check_corpus(df, source, self.text_column)
        return df

    def report_sections(
        self, run_dir: Path, recipe: Recipe, run: dict[str, Any]
    ) -> list[ReportSection]:
        """Perplexity on masked tokens before/after; general-English pseudo-perplexity."""
        return perplexity_report(run, self.general_key, self.perplexity_note)

    @torch.no_grad()
    def predict(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame, batch_size: int
    ) -> list[dict[str, Any]]:
        """Fill-mask: the `top_k` candidates (with probabilities) for each mask token of a
        text and the text filled with the best ones; a text without a mask token is scored
        by its pseudo-perplexity instead. Every row has the same keys."""
        mask_id = processor.mask_token_id
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out: list[dict[str, Any]] = []
        try:
            for text in rows[self.text_column].fillna("").astype(str).tolist():
                enc = processor(text, return_tensors="pt", truncation=True).to(device)
                positions = (enc["input_ids"][0] == mask_id).nonzero().flatten().tolist()
                if not positions:
                    ppl = pseudo_perplexity(model, processor, [text], batch_size, 512)
                    out.append({"filled": text, "fills": [], "pseudo_perplexity": ppl})
                    continue
                probs = model(**enc).logits[0].float().softmax(-1)  # (T, V)
                best = enc["input_ids"][0].clone()
                fills = []
                for pos in positions:
                    p, idx = probs[pos].topk(self.config.top_k)
                    best[pos] = idx[0]
                    fills.append(
                        [
                            {
                                "token": processor.decode([int(i)]).strip(),
                                "prob": round(float(q), 6),
                            }
                            for q, i in zip(p, idx, strict=True)
                        ]
                    )
                out.append(
                    {
                        "filled": processor.decode(best.tolist(), skip_special_tokens=True),
                        "fills": fills,
                        "pseudo_perplexity": None,
                    }
                )
        finally:
            model.train(was_training)
        return out

    def state(self) -> dict[str, Any]:
        return {
            "text_column": self.text_column,
            "block_size": self.config.block_size,
            "packing": self.config.packing,
            "mlm_probability": self.config.mlm_probability,
            "mask_replace_prob": self.config.mask_replace_prob,
            "random_replace_prob": self.config.random_replace_prob,
            "top_k": self.config.top_k,
            "seed": self.seed,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.text_column = state.get("text_column", "text")
        self.seed = int(state.get("seed", self.seed))
        keys = (
            "block_size",
            "packing",
            "mlm_probability",
            "mask_replace_prob",
            "random_replace_prob",
            "top_k",
        )
        self.config = self.config.model_copy(update={k: state[k] for k in keys if k in state})


class SpecialMaskCollator:
    """Right-pads blocks; padding is attention 0 and counts as special (never masked)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> Batch:
        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        special = torch.ones((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[i, :k] = 1
            special[i, :k] = torch.as_tensor(f["special_tokens_mask"], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "special_tokens_mask": special}


def masked_nll(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed NLL over the masked (label != -100) positions and their counts,
    in fp32. No shift: a masked LM predicts the token at its own position."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(labels.shape)
    return nll.sum(1), (labels != IGNORE).sum(1)


class PseudoPerplexity:
    """Pseudo-perplexity of general English (finekit's CC0 reference or the user's file):
    measured on the base model at construction, then on any later state."""

    note = (
        "Pseudo-perplexity (each token masked in turn) of the encoder on general English; "
        "a rise after training is forgetting of general language (lower is better)."
    )
    key = "general_pseudo_perplexity"

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        reference: str | None,
        batch_size: int,
        max_length: int,
    ) -> None:
        self.processor, self.batch_size, self.max_length = processor, batch_size, max_length
        self.texts, self.source = reference_sentences(reference)
        self.before = {self.key: self._score(model)}

    def _score(self, model: nn.Module) -> float:
        return pseudo_perplexity(
            model, self.processor, self.texts, self.batch_size, self.max_length
        )

    def score(self, model: nn.Module) -> dict[str, float]:
        return {self.key: self._score(model)}

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return self.score(model)

    def summarize(self, after: dict[str, float]) -> dict[str, float]:
        b, a = self.before[self.key], after[self.key]
        return {
            f"{self.key}_before": b,
            f"{self.key}_after": a,
            f"{self.key}_increase": a / b - 1.0 if b > 0 else float("nan"),
        }
