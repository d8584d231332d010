"""Retention: how much of the base model's general skill survives fine-tuning.

For text encoders, sentence embeddings of a general-English reference (300 sentences
written for finekit, CC0; or the user's own file) are compared before and after:
- `similarity_preservation`: Spearman correlation between the pairwise cosine-similarity
  matrices of the base and the tuned encoder (1.0 = the geometry of general language is
  intact; representational similarity analysis, Kriegeskorte et al. 2008);
- `embedding_cosine`: mean cosine between each sentence's base and tuned embedding.
Both are 1.0 before training by construction. Causal LMs will report perplexity on the same
text (a later task module).
"""

from __future__ import annotations

import logging
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


class EmbeddingRetention:
    """Holds the base model's reference embeddings; scores any later state of the model."""

    def __init__(
        self, model: nn.Module, tokenizer: Any, max_length: int, reference: str | None = None
    ) -> None:
        self.texts, self.source = reference_sentences(reference)
        self.tokenizer, self.max_length = tokenizer, max_length
        enc = encoder_of(model)
        if enc is None:
            raise ValueError("no encoder found")
        self.base = embed(enc, tokenizer, self.texts, max_length)
        self._iu = np.triu_indices(len(self.texts), k=1)
        self._base_sims = (self.base @ self.base.T)[self._iu]

    def score(self, model: nn.Module) -> dict[str, float]:
        enc = encoder_of(model)
        if enc is None:
            return {}
        now = embed(enc, self.tokenizer, self.texts, self.max_length)
        sims = (now @ now.T)[self._iu]
        rho = spearmanr(self._base_sims, sims).statistic
        return {
            "retention_similarity": float(rho),
            "retention_cosine": float((now * self.base).sum(1).mean()),
        }

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return self.score(model)
