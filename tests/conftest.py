"""Shared fixtures: a tiny random BERT (2 layers, hidden 64) and a learnable toy data set."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# The shipped recipes name their data sets; the tests use the local copies.
os.environ.setdefault("FINEKIT_DATA", str(SHARED / "data"))

# Three intents, each signalled by its own words amid shared filler words.
CLASS_WORDS = {
    "card": ["card", "lost", "stolen", "wallet", "pin", "block"],
    "refund": ["refund", "money", "back", "return", "paid", "twice"],
    "hours": ["open", "hours", "close", "weekend", "today", "time"],
}
FILLER = ["please", "my", "the", "i", "need", "help", "with", "can", "you", "a", "is", "what"]


def make_rows(n_per_class: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label, words in CLASS_WORDS.items():
        for _ in range(n_per_class):
            toks = rng.sample(words, 3) + rng.sample(FILLER, rng.randint(1, 4))
            rng.shuffle(toks)
            rows.append({"text": " ".join(toks), "label": label})
    rng.shuffle(rows)
    return rows


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request: pytest.FixtureRequest):  # noqa: ANN201
    """Unit tests run tiny models (hidden 32-64), where intra-op threads cost more than they
    save: one thread ran the unit suite several times faster here. Real-model integration
    tests keep torch's default."""
    import torch

    before = torch.get_num_threads()
    if request.node.get_closest_marker("integration") is None:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT with a word-level vocabulary, saved like any HF folder."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER) | {"extra", "words"}
    )
    # transformers 5: the tokenizer takes the vocabulary itself (vocab_file= is ignored).
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(cfg).bert.save_pretrained(d)  # a "pre-trained" backbone
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("toy-data")
    train = pd.DataFrame(make_rows(40, seed=1))
    test = pd.DataFrame(make_rows(15, seed=2))
    train.to_csv(d / "train.csv", index=False)
    test.to_csv(d / "test.csv", index=False)
    return {"train": d / "train.csv", "test": d / "test.csv", "dir": d}


@pytest.fixture()
def tiny_recipe(tiny_model_dir: Path, toy_data: dict[str, Path], tmp_path: Path):
    """A fast recipe on the tiny model (fp32: exact comparisons are meaningful)."""
    from finekit import Recipe

    return Recipe.from_dict(
        {
            "name": "tiny",
            "model": str(tiny_model_dir),
            "data": {"train": str(toy_data["train"]), "test": str(toy_data["test"])},
            "training": {
                # The fixed defaults: tests of the loop's behaviour (evaluation per epoch, no
                # early stopping) must not move with the `auto` rules (tests/test_auto.py).
                "auto": False,
                "epochs": 6,
                "batch_size": 8,
                "lr": 1e-3,
                "precision": "fp32",
                "warmup_ratio": 0.0,
                "log_every": 2,
            },
            "output": {"dir": str(tmp_path / "run")},
        }
    )


class CrashAtStep:
    """A loop callback that simulates a crash after optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state, control) -> None:  # noqa: ANN001
        if state.progress.step == self.step:
            raise RuntimeError("simulated crash")


def build_tiny_llama(
    d: Path,
    vocab: list[str],
    *,
    specials: list[str] | None = None,
    chat_template: str | None = None,
    max_positions: int = 128,
    before_save: Callable[[Any, Any], None] | None = None,
    pad: bool = True,
) -> Path:
    """A random 2-layer Llama (hidden 32) and a word-level tokenizer, saved as an HF folder.

    `vocab` starts with "<unk>", "<eos>" (eos = pad = id 1; `pad=False`: no pad token, as
    GPT-2 and Llama ship); `specials` are registered as
    special tokens (e.g. ChatML markers); `before_save(model, tokenizer)` may train the model
    a little first (a base with a skill to lose)."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    assert vocab[:2] == ["<unk>", "<eos>"], vocab[:2]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    if specials:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<eos>",
        unk_token="<unk>",
        **({"pad_token": "<eos>"} if pad else {}),
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        eos_token_id=1,
        pad_token_id=1 if pad else None,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    if before_save is not None:
        before_save(model, fast)
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return d


def build_tiny_bert_mlm(
    d: Path, words: set[str], before_save: Callable[[Any, Any], None] | None = None
) -> Path:
    """A random 2-layer BERT *with* its MLM head (hidden 32) and a word-level tokenizer
    ([MASK] known) over `words` plus the words of finekit's general reference, saved as an
    HF folder; `before_save(model, tokenizer)` may train it a little first."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    from finekit.evaluate.retention import reference_sentences

    general = {
        w.strip(".,;:!?\"'()").lower() for s in reference_sentences(None)[0] for w in s.split()
    }
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted((words | general) - {""})]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(cfg)
    if before_save is not None:
        before_save(model, tok)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d
