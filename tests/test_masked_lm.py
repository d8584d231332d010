"""Task `masked_lm` on a tiny random BERT with a word-level vocabulary built in the test:
blocks wrapped in the tokenizer's special tokens, dynamic 15% masking in training and fixed
masks in evaluation, masked perplexity falls (before/after in run.json), pseudo-perplexity
retention on general English, exact resume, fill-mask predictions, and the export is a valid
base for `classify`."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import build_tiny_bert_mlm

from finekit import finetune, load_run
from finekit.errors import ModelError
from finekit.evaluate.retention import reference_sentences
from finekit.recipe import Recipe
from finekit.tasks import build_task
from finekit.tasks.lm.masked import MaskedLMTask, pseudo_perplexity, special_frame
from finekit.train.callbacks import CallbackError

# The "domain": sentences from fixed templates, so a masked word is predictable from its
# neighbours after training and unpredictable for the random model.
SUBJECTS = ["the king", "the queen", "a knight", "the fool", "my lord"]
VERBS = ["speaks", "weeps", "laughs", "sleeps", "fights"]
PLACES = ["in the hall", "at the gate", "by the sea", "on the hill"]


def domain_text(n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)} ." for _ in range(n)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tiny_bert_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT *with* its MLM head and a word-level tokenizer ([MASK] known)."""
    words = {w for phrase in SUBJECTS + VERBS + PLACES for w in phrase.split()} | {"."}
    return build_tiny_bert_mlm(tmp_path_factory.mktemp("tiny-bert-mlm"), words)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mlm-corpus")
    for i in range(4):
        (d / f"part{i}.txt").write_text(domain_text(60, seed=i), encoding="utf-8")
    return d


def _recipe(model_dir: Path, corpus: Path, out: Path, **over: Any) -> Recipe:
    # Pseudo-perplexity costs one forward pass per token: 30 general sentences suffice here.
    ref = out.parent / "general-30.txt"
    ref.write_text("\n".join(reference_sentences(None)[0][:30]) + "\n", encoding="utf-8")
    r: dict[str, Any] = {
        "model": str(model_dir),
        "task": {"name": "masked_lm", "block_size": 24},
        "data": {"train": str(corpus), "validation_fraction": 0.2},
        "method": "full",
        "training": {
            "max_steps": 80,
            "batch_size": 8,
            "eval_batch_size": 16,
            "lr": 3e-3,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "checkpoint_each_epoch": False,
        },
        "evaluation": {
            "metric": "perplexity",
            "train_eval_samples": 8,
            "every_steps": 30,
            "retention_reference": str(ref),
        },
        "output": {"dir": str(out), "save_checkpoints": False},
    }
    for key, value in over.items():
        r[key] = {**r[key], **value} if isinstance(r[key], dict) else value
    return Recipe.from_dict(r)


def _task_and_tok(model_dir: Path, **cfg: Any) -> tuple[MaskedLMTask, Any]:
    from transformers import AutoTokenizer

    task = build_task(
        Recipe.from_dict(
            {"model": "x", "task": {"name": "masked_lm", **cfg}, "data": {"train": "x"}}
        ).task
    )
    assert isinstance(task, MaskedLMTask)
    return task, AutoTokenizer.from_pretrained(model_dir)


# --------------------------------------------------------------------------- blocks, masks
def test_blocks_are_wrapped_in_special_tokens(tiny_bert_mlm: Path) -> None:
    import pandas as pd

    task, tok = _task_and_tok(tiny_bert_mlm, block_size=12)
    prefix, suffix = special_frame(tok)
    assert prefix == [tok.cls_token_id] and suffix == [tok.sep_token_id]
    df = pd.DataFrame({"text": ["the king speaks .", "the fool weeps by the sea ."] * 5})
    train = task.encode(df, tok, "train")
    for f in train.features:
        ids, special = f["input_ids"], f["special_tokens_mask"]
        assert len(ids) == 12 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert special == [1] + [0] * 10 + [1]
    # Documents are separated by [SEP] inside a packed block; nothing else is special.
    inner = [t for f in train.features for t in f["input_ids"][1:-1]]
    assert inner.count(tok.sep_token_id) >= 5
    assert task.counts["train"]["tokens_dropped"] < 10
    # Evaluation keeps the short remainder, so every held-out token is scored.
    val = task.encode(df, tok, "validation")
    assert (
        sum(len(f["input_ids"]) - 2 for f in val.features)
        == len(inner) + task.counts["train"]["tokens_dropped"]
    )


def test_training_masks_are_dynamic_and_evaluation_masks_fixed(tiny_bert_mlm: Path) -> None:
    import pandas as pd

    task, tok = _task_and_tok(tiny_bert_mlm, block_size=32)
    data = task.encode(pd.DataFrame({"text": [domain_text(200, 0)]}), tok, "train")
    collate = task.collator(tok)
    batch = collate([data[i] for i in range(16)])
    special = batch["special_tokens_mask"].bool()
    torch.manual_seed(1)
    ids1, lab1 = task._mask(batch, None)
    ids2, lab2 = task._mask(batch, None)
    chosen1, chosen2 = lab1 != -100, lab2 != -100
    assert not torch.equal(chosen1, chosen2)  # a new draw each time a block is seen
    assert not (chosen1 & special).any()  # [CLS]/[SEP]/padding are never chosen
    share = chosen1.sum().item() / (~special).sum().item()
    assert 0.09 < share < 0.21  # 15% of the text tokens
    assert (ids1[chosen1] == tok.mask_token_id).float().mean() > 0.6  # most become [MASK]
    assert torch.equal(lab1[chosen1], batch["input_ids"][chosen1])  # targets: the originals
    # Evaluation: the same masks for a row whatever its batch, and no global RNG draw.
    state = torch.get_rng_state()
    a_ids, a_lab = task._fixed_mask(collate([data[i] for i in range(4)]))
    b_ids, b_lab = task._fixed_mask(collate([data[i] for i in range(2, 6)]))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a_lab[2:], b_lab[:2]) and torch.equal(a_ids[2:], b_ids[:2])
    assert (a_lab != -100).any()


def test_a_decoder_tokenizer_without_mask_token_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "a": 2}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", unk_token="<unk>")
    task = build_task(
        Recipe.from_dict({"model": "x", "task": "masked_lm", "data": {"train": "x"}}).task
    )
    with pytest.raises(ModelError, match="no mask token.*causal_lm"):
        task.collator(fast)


# --------------------------------------------------------------------------- end to end
def test_training_lowers_masked_perplexity_and_keeps_a_classify_base(
    tiny_bert_mlm: Path, corpus: Path, tmp_path: Path
) -> None:
    result = finetune(_recipe(tiny_bert_mlm, corpus, tmp_path / "run"))
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["task"] == "masked_lm"
    val = run["metrics"]["validation"]
    assert val["perplexity_after"] == val["perplexity"]
    assert val["perplexity_after"] < 0.5 * val["perplexity_before"]
    assert val["tokens"] > 0
    ret = run["retention"]
    assert ret["general_pseudo_perplexity_before"] > 0
    assert ret["general_pseudo_perplexity_increase"] == pytest.approx(
        ret["general_pseudo_perplexity_after"] / ret["general_pseudo_perplexity_before"] - 1
    )
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "validation"]
    assert evals and "general_pseudo_perplexity" in evals[0]
    assert "Perplexity before and after" in (result.run_dir / "report.html").read_text()
    # The export is a plain masked LM, and a valid base for `classify`: its encoder loads.
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    mlm = AutoModelForMaskedLM.from_pretrained(result.model_dir)
    clf = AutoModelForSequenceClassification.from_pretrained(result.model_dir, num_labels=3)
    torch.testing.assert_close(
        clf.bert.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight
    )
    base = AutoModelForMaskedLM.from_pretrained(tiny_bert_mlm)
    assert not torch.equal(
        mlm.bert.encoder.layer[0].attention.self.query.weight,
        base.bert.encoder.layer[0].attention.self.query.weight,
    )
    # Fill-mask through load_run: the trained model completes the template.
    loaded = load_run(result.run_dir, device="cpu")
    out = loaded.predict(["the king speaks in the [MASK] .", "the queen weeps by the sea ."])
    places = {p.split()[-1] for p in PLACES}  # hall, gate, sea, hill: 4 of ~1,400 words
    assert places & {f["token"] for f in out[0]["fills"][0]}
    assert out[0]["pseudo_perplexity"] is None and len(out[0]["fills"][0]) == 5
    assert out[1]["fills"] == [] and out[1]["pseudo_perplexity"] > 1.0


def test_masked_lm_resumes_exactly(tiny_bert_mlm: Path, corpus: Path, tmp_path: Path) -> None:
    from conftest import CrashAtStep
    from safetensors.torch import load_file

    # EWC on general English (the inherited `fisher_data` hook) rides along: its Fisher is
    # drawn with masks too, and the resumed run must pull toward the same base.
    over = {"training": {"checkpoint_every": 10, "max_steps": 30, "ewc": 1.0, "ewc_batches": 2}}
    r = _recipe(tiny_bert_mlm, corpus, tmp_path / "full", **over)
    r = r.with_overrides({"output.save_checkpoints": True, "evaluation.every_steps": 10})
    full = finetune(r)
    broken = r.with_overrides({"output.dir": str(tmp_path / "broken")})
    with pytest.raises(CallbackError):
        finetune(broken, callbacks=[CrashAtStep(15)])
    resumed = finetune(broken, resume=True)
    assert resumed.train["resumed_from"].endswith("step-00000010")
    assert resumed.metrics["validation"] == full.metrics["validation"]
    assert resumed.summary["regularisers"]["ewc"]["alpha"] == 1.0
    wa = load_file(str(full.model_dir / "model.safetensors"))
    wb = load_file(str(resumed.model_dir / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_lora_on_a_masked_lm_exports_a_plain_model(
    tiny_bert_mlm: Path, corpus: Path, tmp_path: Path
) -> None:
    r = _recipe(
        tiny_bert_mlm,
        corpus,
        tmp_path / "lora",
        method={"name": "lora", "r": 4, "target_modules": ["query", "value"]},
        training={"max_steps": 10},
    )
    result = finetune(r)
    assert (result.run_dir / "adapter").is_dir()
    assert 0 < result.train["trainable_parameters"] < 10_000  # the MLM head stays frozen
    from transformers import AutoModelForMaskedLM

    AutoModelForMaskedLM.from_pretrained(result.model_dir)  # merged, plain


def test_pseudo_perplexity_of_a_random_model_is_near_the_vocabulary(tiny_bert_mlm: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_mlm)
    model = AutoModelForMaskedLM.from_pretrained(tiny_bert_mlm)
    ppl = pseudo_perplexity(model, tok, reference_sentences(None)[0][:20], 32, 64)
    assert 0.3 * len(tok) < ppl < 3 * len(tok)  # a random model: about uniform
