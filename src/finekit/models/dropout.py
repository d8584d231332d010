"""`model.dropout` overrides: which config field each kind of dropout is in, per architecture.

Dropout modules are built from the config, so the rates are set on the config before the
model is constructed. Every field an architecture has for a kind is set (GPT-2's hidden
dropout is both `resid_pdrop` and `embd_pdrop`); a kind it has none for is an error, never
a silent no-op.
"""

from __future__ import annotations

from typing import Any

from finekit.errors import RecipeError
from finekit.recipe import DropoutSpec

# kind -> config fields that hold it, across the architectures transformers ships
# (BERT/RoBERTa/ViT, DistilBERT, GPT-2/Phi, BLOOM/Falcon, T5, ALBERT, Llama/Qwen...).
DROPOUT_FIELDS: dict[str, tuple[str, ...]] = {
    "hidden": (
        "hidden_dropout_prob",  # BERT, RoBERTa, ELECTRA, ViT, Swin
        "hidden_dropout",  # BLOOM, Falcon
        "resid_pdrop",  # GPT-2, GPT-J, Phi
        "embd_pdrop",  # GPT-2, Phi (embedding output)
        "dropout_rate",  # T5
        "dropout",  # DistilBERT, BART, Whisper
    ),
    "attention": (
        "attention_probs_dropout_prob",  # BERT, ViT
        "attention_dropout",  # DistilBERT, Llama, Qwen, Mistral, BART
        "attn_pdrop",  # GPT-2, Phi
        "attn_dropout",
    ),
    "classifier": (
        "classifier_dropout",  # BERT, RoBERTa, ELECTRA (None = the hidden rate)
        "classifier_dropout_prob",  # ALBERT
        "seq_classif_dropout",  # DistilBERT
    ),
}


def dropout_updates(
    spec: DropoutSpec, config: Any, model_type: str, fields: dict[str, tuple[str, ...]] | None
) -> dict[str, float]:
    """{config field: rate} for every override in `spec` (empty when none is set).

    `config` is anything with attributes (an HF PretrainedConfig, a dataclass); `fields`
    replaces DROPOUT_FIELDS for a family with its own names.
    """
    table = DROPOUT_FIELDS if fields is None else fields
    updates: dict[str, float] = {}
    for kind in ("hidden", "attention", "classifier"):
        rate = getattr(spec, kind)
        if rate is None:
            continue
        found = [f for f in table.get(kind, ()) if hasattr(config, f)]
        if not found:
            raise RecipeError(
                f"model.dropout.{kind}={rate}: model type {model_type!r} has no {kind} dropout "
                f"field in its config (looked for {', '.join(table.get(kind, ())) or 'none'}); "
                f"remove model.dropout.{kind}"
            )
        updates.update(dict.fromkeys(found, float(rate)))
    return updates
