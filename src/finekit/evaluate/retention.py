"""Retention: how much of the base model's general skill survives fine-tuning.

For text encoders, sentence embeddings of a general-English reference (300 sentences
written for finekit, CC0; or the user's own file) are compared before and after:
- `similarity_preservation`: Spearman correlation between the pairwise cosine-similarity
  matrices of the base and the tuned encoder (1.0 = the geometry of general language is
  intact; representational similarity analysis, Kriegeskorte et al. 2008);
- `embedding_cosine`: mean cosine between each sentence's base and tuned embedding.
Both are 1.0 before training by construction. Where the checkpoint also ships a masked-LM
head (BERT, RoBERTa, ... but not the sentence-transformers MiniLM), that head is put on the
tuned encoder and the reference's pseudo-perplexity (Salazar et al. 2020) is measured too:
`general_pseudo_perplexity`, before vs after. Language-model tasks bring their own measure
(`task.retention`: general-text perplexity, pseudo-perplexity for `masked_lm`).
"""

from __future__ import annotations

import logging
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from finekit.errors import DataError

log = logging.getLogger(__name__)
REFERENCE = "general_en.txt"


def reference_sentences(path: str | None = None) -> tuple[list[str], str]:
    """The reference text: a user file (one sentence per line) or the shipped one."""
    if path is None:
        src = resources.files("finekit.data").joinpath(f"reference/{REFERENCE}")
        text, name = src.read_text(encoding="utf-8"), f"finekit {REFERENCE} (CC0)"
    else:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"evaluation.retention_reference {path} does not exist")
        try:
            text, name = p.read_text(encoding="utf-8"), str(p)
        except UnicodeDecodeError:
            raise DataError(f"evaluation.retention_reference {path} is not UTF-8") from None
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    if len(lines) < 10:
        raise DataError(f"retention reference {name} has {len(lines)} sentences; need >= 10")
    return lines, name


def encoder_of(model: nn.Module) -> nn.Module | None:
    """The backbone of an HF model with a head (through a peft wrapper too)."""
    m = model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()  # type: ignore[operator]
    prefix = getattr(m, "base_model_prefix", "")
    return getattr(m, prefix, None) if prefix else None


@torch.no_grad()
def embed(
    encoder: nn.Module, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64
) -> np.ndarray:
    """Mean-pooled last hidden states, L2-normalised, shape (N, H)."""
    was = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = encoder(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            ).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, H)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    finally:
        encoder.train(was)
    return torch.cat(out).numpy()


class MaskedLMHead:
    """The base checkpoint's masked-LM head, set on top of whichever encoder is scored: the
    encoder module itself is shared (LoRA and other adapters included) and a tied decoder
    is re-tied to that encoder's input embeddings, so the score is the tuned encoder's."""

    PPL = "general_pseudo_perplexity"

    def __init__(self, mlm: Any) -> None:  # a transformers *ForMaskedLM model
        self.mlm = mlm.eval().requires_grad_(False)
        self.prefix: str = mlm.base_model_prefix
        self.tied = bool(getattr(mlm.config, "tie_word_embeddings", False))

    @classmethod
    def from_checkpoint(cls, path: str) -> MaskedLMHead | None:
        """The head when `path` holds trained masked-LM head weights, else None (e.g. a
        sentence-transformers checkpoint: an encoder alone)."""
        import transformers
        from transformers import AutoModelForMaskedLM

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            mlm, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
        except Exception as e:  # no masked-LM class for this architecture, remote code...
            log.debug("no masked-LM head for %s: %s", path, e)
            return None
        finally:
            transformers.logging.set_verbosity(verbosity)
        prefix = mlm.base_model_prefix
        head_missing = [k for k in info.get("missing_keys", []) if not k.startswith(prefix)]
        if head_missing:
            log.info(
                "%s ships no masked-LM head (%s...): no pseudo-perplexity", path, head_missing[0]
            )
            return None
        return cls(mlm)

    def on(self, encoder: nn.Module) -> nn.Module:
        """The masked-LM model with `encoder` in place of its own."""
        setattr(self.mlm, self.prefix, encoder)
        if self.tied:
            embeddings: Any = encoder.get_input_embeddings()  # type: ignore[operator]
            self.mlm.get_output_embeddings().weight = embeddings.weight
        model: nn.Module = self.mlm.to(next(encoder.parameters()).device)
        return model

    def score(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        texts: list[str],
        max_length: int,
        batch_size: int = 64,
    ) -> float:
        return pseudo_perplexity(self.on(encoder), tokenizer, texts, batch_size, max_length)


class EmbeddingRetention:
    """Holds the base model's reference embeddings (and, with `mlm_head`, its reference
    pseudo-perplexity); scores any later state of the model."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        max_length: int,
        reference: str | None = None,
        mlm_head: MaskedLMHead | None = None,
    ) -> None:
        self.texts, self.source = reference_sentences(reference)
        self.tokenizer, self.max_length = tokenizer, max_length
        enc = encoder_of(model)
        if enc is None:
            raise ValueError("no encoder found")
        self.mlm_head = mlm_head
        self.base = embed(enc, tokenizer, self.texts, max_length)
        self._iu = np.triu_indices(len(self.texts), k=1)
        self._base_sims = (self.base @ self.base.T)[self._iu]
        self.before: dict[str, float] = {"retention_similarity": 1.0, "retention_cosine": 1.0}
        self.note: str | None = None
        if mlm_head is not None:
            self.before[MaskedLMHead.PPL] = self._ppl(enc)
            self.note = (
                "retention_similarity/retention_cosine: the base's embedding geometry of "
                "general English kept (1 = intact); general_pseudo_perplexity: the "
                "checkpoint's masked-LM head on the tuned encoder (lower is better)."
            )

    def _ppl(self, encoder: nn.Module) -> float:
        assert self.mlm_head is not None
        was = encoder.training
        try:
            return self.mlm_head.score(encoder, self.tokenizer, self.texts, self.max_length)
        finally:
            encoder.train(was)

    def score(self, model: nn.Module) -> dict[str, float]:
        enc = encoder_of(model)
        if enc is None:
            return {}
        now = embed(enc, self.tokenizer, self.texts, self.max_length)
        sims = (now @ now.T)[self._iu]
        rho = spearmanr(self._base_sims, sims).statistic
        out = {
            "retention_similarity": float(rho),
            "retention_cosine": float((now * self.base).sum(1).mean()),
        }
        if self.mlm_head is not None:
            out[MaskedLMHead.PPL] = self._ppl(enc)
        return out

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return self.score(model)

    def summarize(self, after: dict[str, float]) -> dict[str, float]:
        key = MaskedLMHead.PPL
        if key not in after or key not in self.before:
            return {}
        b, a = self.before[key], after[key]
        return {
            f"{key}_before": b,
            f"{key}_after": a,
            f"{key}_increase": a / b - 1.0 if b > 0 else float("nan"),
        }


def special_frame(processor: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts around one text ([CLS] / [SEP] for BERT,
    <s> / </s> for RoBERTa), read off its own post-processor."""
    bare = processor("x", add_special_tokens=False)["input_ids"]
    full = processor("x", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare) :])
    return [], []


@torch.no_grad()
def pseudo_perplexity(
    model: nn.Module, processor: Any, texts: list[str], batch_size: int, max_length: int
) -> float:
    """exp(-mean log p(token | the rest)), each non-special token masked in turn (Salazar
    et al. 2020, "Masked Language Model Scoring"). One forward pass per token, batched."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    mask_id = processor.mask_token_id
    prefix, suffix = special_frame(processor)
    enc = processor(texts, add_special_tokens=True, truncation=True, max_length=max_length)
    queries: list[tuple[list[int], int, int]] = []  # (ids, position, true token)
    for ids in enc["input_ids"]:
        for pos in range(len(prefix), len(ids) - len(suffix)):
            queries.append((ids, pos, ids[pos]))
    total, count = 0.0, 0
    pad = processor.pad_token_id  # masked-LM tokenizers have one; else EOS (as LMs pad)
    pad = int(pad if pad is not None else getattr(processor, "eos_token_id", 0) or 0)
    try:
        for i in range(0, len(queries), batch_size):
            chunk = queries[i : i + batch_size]
            width = max(len(q[0]) for q in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            att = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, (seq, pos, _) in enumerate(chunk):
                ids[j, : len(seq)] = torch.as_tensor(seq)
                ids[j, pos] = mask_id
                att[j, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits
            rows = torch.arange(len(chunk))
            pos_t = torch.as_tensor([q[1] for q in chunk])
            true_t = torch.as_tensor([q[2] for q in chunk])
            logp = logits.float().log_softmax(-1)[rows.to(device), pos_t.to(device)]
            total -= float(logp[rows.to(device), true_t.to(device)].sum())
            count += len(chunk)
    finally:
        model.train(was_training)
    if count == 0:
        raise DataError("pseudo-perplexity: the texts hold no token to score")
    try:
        return math.exp(total / count)
    except OverflowError:
        return float("inf")
