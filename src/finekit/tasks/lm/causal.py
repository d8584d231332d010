"""Task `causal_lm`: continued self-supervised pre-training of a decoder LM on a corpus.

Documents are tokenized without special tokens, joined with EOS after each one and cut
into blocks of `block_size` tokens (packing: no padding, no wasted compute). Evaluation
is token-weighted negative log-likelihood and its exponential, perplexity; the base
model's perplexity is measured before training (`baseline`) and on general English
(`retention`), so run.json says what the domain gained and what general text lost.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from finekit.core.contracts import (
    Batch,
    EncodedDataset,
    HeadSpec,
    Prepared,
    ReportSection,
    Table,
    Text,
)
from finekit.data.splits import Splits
from finekit.errors import DataError, ModelError, RecipeError
from finekit.evaluate.retention import reference_sentences
from finekit.recipe import Recipe, TaskConfig
from finekit.recipe.auto import Proposals, schedule_rule

log = logging.getLogger(__name__)
METRICS = ("perplexity", "loss")  # headline metrics (both: lower is better)
IGNORE = -100  # label of positions that are not scored (padding)


class CausalLMConfig(TaskConfig):
    """Options of `causal_lm`."""

    name: str = "causal_lm"

    default_metric: ClassVar[str] = "perplexity"

    def length_fields(self) -> dict[str, int]:
        return {"task.block_size": self.block_size}

    # Tokens per training example; longer blocks see more context but cost more memory.
    block_size: int = Field(256, ge=8, le=131072)
    # true: concatenate documents (EOS after each) and cut into full blocks, no padding;
    # false: each document is cut into its own blocks (the last one shorter, padded).
    packing: bool = True
    # Greedy continuation length for `predict`.
    max_new_tokens: int = Field(64, ge=1, le=4096)

    def auto_defaults(self, p: Proposals) -> None:
        corpus_rules(p, self.block_size, "causal")


class CausalLMTask:
    """Next-token prediction on plain text (causal-lm head)."""

    name = "causal_lm"
    metric_names: tuple[str, ...] = METRICS
    general_key = "general_perplexity"  # the retention measure's name in run.json
    perplexity_note = "Perplexity = exp(mean next-token NLL), token-weighted."

    def __init__(self, config: CausalLMConfig) -> None:
        self.config = config
        self.text_column = "text"
        self.seed = 42
        self.max_train_blocks: int | None = None
        self.counts: dict[str, dict[str, int]] = {}  # split -> documents/tokens/blocks

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

    def _check(self, df: pd.DataFrame, source: str) -> None:
        check_corpus(df, source, self.text_column)

    size_unit = "training token blocks"

    def train_size(self, info: dict[str, Any]) -> int | None:
        return trained_blocks(info)

    def head(self) -> HeadSpec:
        return HeadSpec(kind="causal-lm")

    # ------------------------------------------------------------------ features
    def input_lengths(self, df: pd.DataFrame, processor: Any) -> list[int]:
        return document_lengths(processor, df[self.text_column].fillna("").astype(str).tolist())

    def encode(self, df: pd.DataFrame, processor: Any, split: str) -> EncodedDataset:
        """Blocks of token ids. Training keeps full blocks only (the short remainder is
        dropped and counted); evaluation keeps it, so every held-out token is scored."""
        eos = getattr(processor, "eos_token_id", None)
        if eos is None:
            raise ModelError("causal_lm: the tokenizer has no EOS token to separate documents")
        texts = [t for t in df[self.text_column].fillna("").astype(str).tolist() if t.strip()]
        docs = tokenize(processor, texts)
        bs = self.config.block_size
        blocks, dropped = cut_blocks(
            docs,
            bs,
            sep=eos,
            packing=self.config.packing,
            keep_rest=split != "train",
            min_len=2,
            sep_unpacked=True,
        )
        if not blocks:
            n = sum(len(x) + 1 for x in docs)
            raise DataError(
                f"{split}: the text has {n} tokens, fewer than task.block_size={bs}; lower "
                "task.block_size or add text"
            )
        if split == "train":
            blocks = cap_blocks(blocks, self.max_train_blocks, self.seed)
        self.counts[split] = {
            "documents": len(docs),
            "tokens": sum(len(b) for b in blocks),
            "blocks": len(blocks),
            "tokens_dropped": dropped,
        }
        if dropped and split == "train":
            log.info("%s: %d tokens after the last full block are not trained on", split, dropped)
        return EncodedDataset([{"input_ids": b} for b in blocks], [len(b) for b in blocks])

    def collator(self, processor: Any) -> Callable[[list[dict[str, Any]]], Batch]:
        return BlockCollator(pad_token_id(processor))

    # ------------------------------------------------------------------ steps
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return lm_loss(model, batch)

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return lm_eval_step(model, batch)

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        return lm_metrics(outputs)

    def artifacts(
        self,
        outputs: dict[str, torch.Tensor],
        out_dir: Path,
        split: str,
        rows: pd.DataFrame | None = None,
    ) -> list[str]:
        return []  # eval/<split>.json already holds the numbers

    # ------------------------------------------------------------------ before / retention
    def baseline(
        self, model: nn.Module, processor: Any, encoded: dict[str, EncodedDataset], batch_size: int
    ) -> dict[str, dict[str, Any]]:
        """The base model's perplexity on each evaluation split (`perplexity_before`)."""
        return perplexity_before(self, model, processor, encoded, batch_size)

    def retention(
        self, model: nn.Module, processor: Any, recipe: Recipe
    ) -> GeneralPerplexity | None:
        """Forgetting of general English: perplexity on finekit's reference before/after."""
        return GeneralPerplexity(
            self,
            model,
            processor,
            recipe.evaluation.retention_reference,
            recipe.training.eval_batch_size,
        )

    def reference_data(self, processor: Any, reference: str | None) -> EncodedDataset:
        """General English (finekit's reference or the user's file) as evaluation blocks."""
        return reference_blocks(self, processor, reference)

    def fisher_data(self, processor: Any, recipe: Recipe) -> EncodedDataset:
        """EWC's reference set (`training.ewc`): general English, the skill to keep."""
        return self.reference_data(processor, recipe.evaluation.retention_reference)

    # ------------------------------------------------------------------ inference
    def read_inputs(self, df: pd.DataFrame, source: str, with_labels: bool = False) -> pd.DataFrame:
        self._check(df, source)
        return df

    @torch.no_grad()
    def predict(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame, batch_size: int
    ) -> list[dict[str, Any]]:
        """Greedy continuation of each row's text (`task.max_new_tokens` tokens at most)."""
        prompts = rows[self.text_column].fillna("").astype(str).tolist()
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        side = getattr(processor, "padding_side", "right")
        processor.padding_side = "left"  # decoder-only: the prompt ends where generation starts
        results: list[dict[str, Any]] = []
        try:
            for i in range(0, len(prompts), batch_size):
                enc = processor(
                    prompts[i : i + batch_size],
                    add_special_tokens=False,
                    padding=True,
                    return_tensors="pt",
                ).to(device)
                out = model.generate(  # type: ignore[operator]
                    **enc,
                    max_new_tokens=self.config.max_new_tokens,
                    do_sample=False,
                    pad_token_id=processor.pad_token_id
                    if processor.pad_token_id is not None
                    else processor.eos_token_id,
                )
                new = out[:, enc["input_ids"].shape[1] :]
                for row in new:
                    results.append(
                        {"text": processor.decode(row.tolist(), skip_special_tokens=True)}
                    )
        finally:
            processor.padding_side = side
            model.train(was_training)
        return results

    def report_sections(
        self, run_dir: Path, recipe: Recipe, run: dict[str, Any]
    ) -> list[ReportSection]:
        """Perplexity before/after per split and on general English."""
        return perplexity_report(run, self.general_key, self.perplexity_note)

    def state(self) -> dict[str, Any]:
        return {
            "text_column": self.text_column,
            "block_size": self.config.block_size,
            "packing": self.config.packing,
            "max_new_tokens": self.config.max_new_tokens,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.text_column = state.get("text_column", "text")
        self.config = self.config.model_copy(
            update={k: state[k] for k in ("block_size", "packing", "max_new_tokens") if k in state}
        )


class BlockCollator:
    """Right-pads blocks; padding gets attention 0 and label -100 (never scored). Labels
    are the inputs themselves: the model's shift makes them next-token targets."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> Batch:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        for i, f in enumerate(features):
            seq = torch.as_tensor(f["input_ids"], dtype=torch.long)
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1
            labels[i, : len(seq)] = seq
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_nll(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed next-token NLL and scored-token counts, in fp32 (log-softmax
    over a 50k vocabulary loses bits in bf16). Labels -100 are ignored."""
    if "position_ids" in batch:  # packed rows: positions restart per sequence, and with no
        # 2-D mask and no cache transformers builds the block-diagonal causal mask from them
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Prompt tuning: peft returns logits for its virtual tokens too, in front: drop them.
    logits = logits[:, -batch["input_ids"].shape[1] :]
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1].float()
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(labels.shape)
    return nll.sum(1), (labels != IGNORE).sum(1)


class GeneralPerplexity:
    """Perplexity of general English (finekit's CC0 reference or the user's file): measured
    on the base model at construction, then on any later state (per validation, exported)."""

    note = (
        "Perplexity of the model on general English text; a rise after training is "
        "forgetting of general language (lower is better)."
    )

    def __init__(
        self,
        task: CausalLMTask,
        model: nn.Module,
        processor: Any,
        reference: str | None,
        batch_size: int,
    ) -> None:
        self.task, self.processor, self.batch_size = task, processor, batch_size
        self.texts, self.source = reference_sentences(reference)
        self.data = task.reference_data(processor, reference)
        self.before = {"general_perplexity": self._score(model)}

    def _score(self, model: nn.Module) -> float:
        return float(
            evaluate_blocks(self.task, model, self.processor, self.data, self.batch_size)[
                "perplexity"
            ]
        )

    def score(self, model: nn.Module) -> dict[str, float]:
        return {"general_perplexity": self._score(model)}

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return self.score(model)

    def summarize(self, after: dict[str, float]) -> dict[str, float]:
        """run.json `retention` fields: before, after and the relative increase."""
        b, a = self.before["general_perplexity"], after["general_perplexity"]
        return {
            "general_perplexity_before": b,
            "general_perplexity_after": a,
            "general_perplexity_increase": a / b - 1.0 if b > 0 else float("nan"),
        }


def cut_blocks(
    docs: list[list[int]],
    size: int,
    *,
    sep: int | None,
    packing: bool,
    keep_rest: bool,
    min_len: int,
    sep_unpacked: bool,
) -> tuple[list[list[int]], int]:
    """Cut tokenised documents into blocks of `size` tokens; returns (blocks, tokens dropped).

    Packed: the documents, each followed by `sep`, form one stream cut into full blocks; the
    remainder is kept (when `keep_rest` and at least `min_len` long) or dropped. Unpacked:
    each document (followed by `sep` when `sep_unpacked`) is cut on its own and pieces
    shorter than `min_len` are dropped."""
    tail = [sep] if sep is not None else []
    blocks: list[list[int]] = []
    dropped = 0
    if packing:
        stream = [tok for ids in docs for tok in (*ids, *tail)]
        n_full = len(stream) // size
        blocks = [stream[i * size : (i + 1) * size] for i in range(n_full)]
        rest = stream[n_full * size :]
        if keep_rest and len(rest) >= min_len:
            blocks.append(rest)
        else:
            dropped = len(rest)
    else:
        for ids in docs:
            seq = [*ids, *tail] if sep_unpacked else list(ids)
            for i in range(0, len(seq), size):
                piece = seq[i : i + size]
                if len(piece) >= min_len:
                    blocks.append(piece)
                else:
                    dropped += len(piece)
    return blocks, dropped


def cap_blocks(blocks: list[list[int]], limit: int | None, seed: int) -> list[list[int]]:
    """At most `limit` blocks, a seeded random subset kept in corpus order."""
    if not limit or len(blocks) <= limit:
        return blocks
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(blocks), generator=g)[:limit]
    return [blocks[i] for i in keep.sort().values.tolist()]


def tail_holdout(
    df: pd.DataFrame, fraction: float, column: str, source: str, what: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the last `fraction` of the characters off a corpus (rows in order), cutting
    at a line break near the boundary: contiguous, reproducible, no shared sentence."""
    texts = df[column].fillna("").astype(str).tolist()
    total = sum(len(t) for t in texts)
    want = max(1, round(total * fraction))
    keep_rows, held_rows = df.iloc[0:0].copy(), df.iloc[0:0].copy()
    seen = 0
    for i in range(len(texts) - 1, -1, -1):
        t = texts[i]
        if seen + len(t) <= want:  # the whole document is held out
            seen += len(t)
            continue
        cut = len(t) - (want - seen)  # position in this document where the tail starts
        nl = t.find("\n", cut)
        if nl == -1 or nl + 1 >= len(t):
            nl = t.rfind("\n", 0, cut)
        cut = nl + 1 if nl != -1 else cut
        head_part, tail_part = t[:cut], t[cut:]
        before, after = df.iloc[:i], df.iloc[i + 1 :]
        row = df.iloc[[i]]
        keep_rows = pd.concat([before, row.assign(**{column: head_part})])
        held_rows = pd.concat([row.assign(**{column: tail_part}), after])
        break
    else:
        held_rows = df
    keep_rows = keep_rows[keep_rows[column].astype(str).str.strip() != ""]
    held_rows = held_rows[held_rows[column].astype(str).str.strip() != ""]
    if keep_rows.empty or held_rows.empty:
        raise DataError(
            f"{source}: the corpus ({total} characters) is too small to hold out "
            f"{fraction:.0%} as {what}; give a {what} file (data.{what}) or set "
            f"data.{what}_fraction=0"
        )
    return keep_rows.reset_index(drop=True), held_rows.reset_index(drop=True)


def fold_text(
    df: pd.DataFrame, k: int, index: int, column: str, source: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training text, validation text) for fold `index` of `k`: the corpus (rows in order)
    cut once into k contiguous parts of about equal characters, each cut at the row
    boundary or line break nearest its target (else at a space); the validation part is
    part `index`, training the text before and after it. The k parts tile the corpus."""
    texts = df[column].fillna("").astype(str).tolist()
    starts = [0]
    for t in texts:
        starts.append(starts[-1] + len(t))
    total = starts[-1]
    whole = "".join(texts)
    breaks = sorted({*starts[1:-1], *(m.end() for m in re.finditer("\n", whole))} - {total})
    cuts = [0]
    for j in range(1, k):
        target = round(j * total / k)
        cut = _nearest(breaks, target)
        if cut is None or abs(cut - target) > total / (2 * k):
            space = whole.find(" ", target)
            space = space if space != -1 else whole.rfind(" ", 0, target)
            cut = space + 1 if space != -1 else target  # one long word: cut inside it
        cuts.append(min(max(cut, cuts[-1]), total))
    cuts.append(total)
    lo, hi = cuts[index], cuts[index + 1]
    before: list[pd.DataFrame] = []
    held: list[pd.DataFrame] = []
    after: list[pd.DataFrame] = []
    for i in range(len(texts)):
        s0, s1 = starts[i], starts[i + 1]
        for part, a, b in (
            (before, s0, min(s1, lo)),
            (held, max(s0, lo), min(s1, hi)),
            (after, max(s0, hi), s1),
        ):
            if b > a and whole[a:b].strip():
                part.append(df.iloc[[i]].assign(**{column: whole[a:b]}))
    if not held or not (before or after):
        raise DataError(
            f"{source}: the corpus ({total} characters) is too small to cut into "
            f"data.folds.k={k} parts; lower the number of folds (--folds)"
        )
    train = pd.concat(before + after).reset_index(drop=True)
    return train, pd.concat(held).reset_index(drop=True)


def _nearest(sorted_positions: list[int], target: int) -> int | None:
    i = bisect.bisect_left(sorted_positions, target)
    near = sorted_positions[max(0, i - 1) : i + 1]
    return min(near, key=lambda p: abs(p - target)) if near else None


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")


def _fmt(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else str(x)


def _change(before: Any, after: Any) -> str:
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)) or not before:
        return ""
    return f"{100 * (after / before - 1):+.1f}%"


# ---------------------------------------------------------------------- shared LM steps
# (also used by tasks/chat.py: the same token-level objective on other tokens)
def pad_token_id(processor: Any) -> int:
    """The tokenizer's pad id, else its EOS id (decoder tokenizers often lack a pad)."""
    pad = getattr(processor, "pad_token_id", None)
    return int(pad if pad is not None else getattr(processor, "eos_token_id", 0) or 0)


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean NLL over the supervised (label != -100) tokens of the batch."""
    nll, n = token_nll(model, batch)
    return nll.sum() / n.sum().clamp_min(1)


def lm_eval_step(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    nll, n = token_nll(model, batch)
    return {"nll": nll.detach(), "tokens": n}


def lm_metrics(outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Token-weighted mean NLL (nats) and perplexity = exp(mean NLL)."""
    tokens = int(outputs["tokens"].sum())
    loss = float(outputs["nll"].double().sum()) / max(1, tokens)
    return {
        "perplexity": _exp(loss),
        "loss": loss,
        "tokens": tokens,
        "examples": int(len(outputs["tokens"])),
    }


# --------------------------------------------------------------------------- shared by LM tasks
class Corpus(Protocol):
    """What the shared corpus functions read of an LM task (causal_lm, masked_lm)."""

    name: str
    metric_names: tuple[str, ...]
    text_column: str
    counts: dict[str, dict[str, int]]

    @property
    def config(self) -> Any: ...  # block_size, packing


def prepare_corpus(task: Corpus, splits: Splits, recipe: Recipe) -> Prepared:
    """Check the text column, hold out the corpus's tail (test, then validation) or cut a
    contiguous fold; the token counts fill `task.counts` when the splits are encoded."""
    d, column = recipe.data, task.text_column
    if recipe.evaluation.metric not in task.metric_names:
        raise RecipeError(
            f"evaluation.metric={recipe.evaluation.metric!r} is not a {task.name} metric; "
            f"allowed: {', '.join(task.metric_names)}"
        )
    for split, df in splits.items():
        check_corpus(df, splits.sources.get(split, split), column)
    train, val, test = splits.train, splits.validation, splits.test
    src = splits.sources["train"]
    sources = dict(splits.sources)
    # The tail of the corpus is held out (contiguous, so no sentence of the held-out
    # text also sits in training); test is the very end, validation just before it.
    if test is None and d.test_fraction > 0:
        train, test = tail_holdout(train, d.test_fraction, column, src, "test")
        sources["test"] = f"last {d.test_fraction:.0%} of the text of {src}"
    if d.folds is not None:
        train, val = fold_text(train, d.folds.k, d.folds.index, column, src)
        sources["validation"] = (
            f"part {d.folds.index + 1} of {d.folds.k} of the text of {src} (contiguous)"
        )
    elif val is None and d.validation_fraction > 0:
        train, val = tail_holdout(train, d.validation_fraction, column, src, "validation")
        sources["validation"] = f"last {d.validation_fraction:.0%} of the text of {src}" + (
            " before the test part" if "test" in sources and test is not None else ""
        )
    out = Splits(train=train, validation=val, test=test, sources=sources)
    info: dict[str, Any] = {
        "documents": {s: int(len(df)) for s, df in out.items()},
        "characters": {s: int(df[column].astype(str).str.len().sum()) for s, df in out.items()},
        "sources": sources,
        "block_size": task.config.block_size,
        "packing": task.config.packing,
        "tokens": task.counts,  # filled by `encode` (before run.json is written)
    }
    return Prepared(splits=out, info=info)


def check_corpus(df: pd.DataFrame, source: str, column: str) -> None:
    if column not in df.columns:
        raise DataError(
            f"{source}: no column {column!r} (set data.text_column); columns are "
            f"{[str(c) for c in df.columns]}"
        )
    texts = df[column]
    if (texts.isna() | (texts.astype(str).str.strip() == "")).all():
        raise DataError(f"{source}: column {column!r} holds no text (empty corpus)")


def trained_blocks(info: dict[str, Any]) -> int | None:
    n = info.get("tokens", {}).get("train", {}).get("blocks")
    return None if n is None else int(n)


def corpus_rules(p: Proposals, block_size: int, kind: str) -> None:
    """`auto` for continued pre-training (causal_lm, masked_lm): the step floor counts
    blocks of `block_size` tokens, not documents."""
    src = "recipes/shakespeare-cpt.yaml (measured in benchmarks/README.md)"
    p.propose("training.batch_size", 8, "blocks of hundreds of tokens: batch 8", src)
    p.propose(
        "training.lr",
        5e-5,
        f"full continued pre-training of a {kind} LM",
        "transformers' run_clm/run_mlm examples (5e-5)",
    )  # LoRA raises it (method auto_lr)
    p.propose("training.head_lr", None, "no new head: the LM head is pre-trained", src)
    p.propose("training.warmup_ratio", 0.05, "short warm-up (5% of steps)", src)
    p.propose(
        "training.max_length",
        block_size,
        "the model reads blocks of task.block_size tokens",
        "task.block_size",
    )
    lengths = p.facts.lengths or []
    blocks = sum(n + 1 for n in lengths) // block_size  # +1: the separator of each document
    # ~2 passes over a small corpus (shakespeare-cpt: 300 steps x 8 blocks), one over a
    # large one; perplexity keeps falling: no early stopping.
    schedule_rule(
        p, floor_steps=300, min_epochs=1, source=src, evaluations=3, small=0, rows=blocks or None
    )


def document_lengths(processor: Any, texts: list[str]) -> list[int]:
    """Tokens per non-empty document (what `auto` counts blocks from)."""
    return [len(ids) for ids in tokenize(processor, [t for t in texts if t.strip()])]


def tokenize(processor: Any, texts: list[str]) -> list[list[int]]:
    import transformers

    verbosity = transformers.logging.get_verbosity()
    # "Token indices sequence length is longer than the maximum": blocks cut it below.
    transformers.logging.set_verbosity_error()
    try:
        return list(processor(texts, add_special_tokens=False)["input_ids"])
    finally:
        transformers.logging.set_verbosity(verbosity)


def evaluate_blocks(
    task: Any, model: nn.Module, processor: Any, data: EncodedDataset, batch_size: int
) -> dict[str, Any]:
    """An LM task's perplexity/loss/tokens of `model` on encoded blocks, on its device."""
    from finekit.evaluate.runner import run_outputs

    metrics: dict[str, Any] = task.metrics(
        run_outputs(task, model, data, task.collator(processor), batch_size)
    )
    return metrics


def perplexity_before(
    task: Any,
    model: nn.Module,
    processor: Any,
    encoded: dict[str, EncodedDataset],
    batch_size: int,
) -> dict[str, dict[str, Any]]:
    """The base model's perplexity on each evaluation split (fp32, no grad), merged into
    the final metrics as `perplexity_before` beside `perplexity_after`."""
    out = {}
    for split, data in encoded.items():
        if split == "train" or len(data) == 0:
            continue
        m = evaluate_blocks(task, model, processor, data, batch_size)
        out[split] = {"perplexity_before": m["perplexity"], "loss_before": m["loss"]}
    return out


def reference_blocks(task: Any, processor: Any, reference: str | None) -> EncodedDataset:
    """General English (finekit's reference or the user's file) as evaluation blocks of
    `task`'s own encoding; not counted as a data split."""
    texts, _ = reference_sentences(reference)
    df = pd.DataFrame({task.text_column: ["\n".join(texts)]})
    data: EncodedDataset = task.encode(df, processor, "reference")
    task.counts.pop("reference", None)
    return data


def perplexity_report(run: dict[str, Any], general_key: str, note: str) -> list[ReportSection]:
    """Perplexity before/after per split and on general English."""
    rows = []
    for split, m in (run.get("metrics") or {}).items():
        if "perplexity_before" in m:
            b, a = m["perplexity_before"], m.get("perplexity_after", m.get("perplexity"))
            rows.append([split, _fmt(b), _fmt(a), _change(b, a)])
    ret = run.get("retention") or {}
    if f"{general_key}_before" in ret:
        b, a = ret[f"{general_key}_before"], ret[f"{general_key}_after"]
        rows.append(["general English (reference)", _fmt(b), _fmt(a), _change(b, a)])
    if not rows:
        return []
    data = run.get("data") or {}
    text = (
        f"{note} Blocks of {data.get('block_size')} tokens. Lower is better: the domain split "
        "should fall; a large rise on general English is forgetting."
    )
    return [
        ReportSection(
            "Perplexity before and after",
            [Table(["text", "before", "after", "change"], rows), Text(text, "muted")],
        )
    ]
