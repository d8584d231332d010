"""Two "risks of fine-tuning" controls on tiny random models.

Prompt tuning (Lester et al. 2021): only the virtual tokens (+ a classifier's head) train,
the base weights stay as they were, the run exports base + adapter and `load_run` predicts
what the in-memory model predicts; causal LMs score with the virtual positions dropped and
generate; heads without input embeddings (images, masked LM) are refused before anything
is written.

Text mixup (Guo et al. 2019): training batches mix the head's input features with a Beta
weight and mix the two losses; evaluation is never mixed; a resumed run equals the
uninterrupted one; language-model tasks still refuse it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CrashAtStep, build_tiny_llama
from safetensors.torch import load_file

from finekit import Recipe, finetune, load_run
from finekit.data.augment.features import FeatureMixup, MixDraw
from finekit.errors import ModelError, RecipeError
from finekit.tasks.lm.causal import token_nll
from finekit.train.callbacks import CallbackError

N_VIRTUAL = 8


class KeepModel:
    """A loop callback that keeps the trained (in-memory) model at the end."""

    model: Any = None

    def on_train_end(self, state, control) -> None:  # noqa: ANN001
        self.model = state.model


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _train_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in rows if x["split"] == "train"]


# =========================================================================== prompt tuning
def _prompt(r: Recipe, **method: Any) -> Recipe:
    return r.with_overrides(
        {
            "method": {"name": "prompt_tuning", "num_virtual_tokens": N_VIRTUAL, **method},
            "training.lr": 3e-2,
        }
    )


def test_prompt_tuning_recipe_fields_and_set_overrides() -> None:
    base = {"model": "m", "data": {"train": "t.csv"}}
    r = Recipe.from_dict({**base, "method": "prompt_tuning"})
    assert r.method.num_virtual_tokens == 20 and r.method.init == "random"  # type: ignore[attr-defined]
    r = r.with_overrides({"method.init": "text", "method.init_text": "classify the intent"})
    assert r.method.init_text == "classify the intent"  # type: ignore[attr-defined]
    with pytest.raises(RecipeError, match=r"method\.init=text needs method\.init_text"):
        Recipe.from_dict({**base, "method": {"name": "prompt_tuning", "init": "text"}})
    with pytest.raises(RecipeError, match=r"method\.init_text is only used"):
        Recipe.from_dict({**base, "method": {"name": "prompt_tuning", "init_text": "x"}})


@pytest.fixture(scope="module")
def pretrained_bert(
    tiny_model_dir: Path, toy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny BERT after full fine-tuning on the toy intents, without its head: a frozen
    random BERT's features carry no class signal (even a linear probe stays at chance),
    so prompt tuning — a method for pre-trained models — needs a backbone that learnt."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    d = tmp_path_factory.mktemp("pretrained-bert")
    r = {
        "model": str(tiny_model_dir),
        "data": {"train": str(toy_data["train"]), "validation_fraction": 0.0},
        "training": {"epochs": 6, "batch_size": 8, "lr": 1e-3, "precision": "fp32"},
        "evaluation": {"retention": "off", "train_eval_samples": 0, "artifacts": False},
        "output": {"dir": str(d / "run"), "save_checkpoints": False},
    }
    run = finetune(r).model_dir
    AutoModelForSequenceClassification.from_pretrained(run).bert.save_pretrained(d / "model")
    AutoTokenizer.from_pretrained(run).save_pretrained(d / "model")
    return d / "model"


def test_prompt_tuning_classifier_trains_prompt_and_head_only(
    tiny_recipe: Recipe, pretrained_bert: Path, toy_data: dict[str, Path]
) -> None:
    keep = KeepModel()
    r = _prompt(tiny_recipe, init="text", init_text="card refund hours").with_overrides(
        {"model.path": str(pretrained_bert), "training.epochs": 4}
    )
    result = finetune(r, callbacks=[keep])
    run = result.summary
    hidden, labels = 64, 3
    # Only the virtual tokens and the new classifier (weight + bias) train.
    assert run["train"]["trainable_parameters"] == N_VIRTUAL * hidden + hidden * labels + labels
    trainable = {n for n, p in keep.model.named_parameters() if p.requires_grad}
    assert all("prompt_encoder" in n or ".classifier." in n for n in trainable), trainable
    # The base weights are the pre-trained ones, bit for bit; model/ is that base.
    base = _weights(pretrained_bert)
    exported = _weights(result.model_dir)
    body = {k: v for k, v in exported.items() if k.startswith("bert.")}
    assert body and all(torch.equal(v, base[k.removeprefix("bert.")]) for k, v in body.items())
    adapter = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "PROMPT_TUNING" and adapter["task_type"] == "SEQ_CLS"
    assert adapter["num_virtual_tokens"] == N_VIRTUAL and "classifier" in adapter["modules_to_save"]
    assert run["artifacts"]["adapter"] == "adapter"
    assert run["artifacts"]["model_is"].startswith("base")
    assert run["artifacts"]["base_model"] == str(pretrained_bert)
    # The head trained (differs from the random head saved in model/), and the loss fell.
    saved = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
    head = next(v for k, v in saved.items() if k.endswith("classifier.weight"))
    assert not torch.equal(head, exported["classifier.weight"])
    losses = _train_losses(result.run_dir)
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert result.metrics["test"]["accuracy"] > 0.8  # 3 classes: chance is 1/3
    # load_run (base + adapter, from the run folder alone) predicts what training ended with.
    loaded = load_run(result.run_dir, device="cpu")
    assert type(loaded.model).__name__.startswith("PeftModel")
    texts = pd.read_csv(toy_data["test"])["text"].tolist()[:12]
    got = loaded.predict(texts)
    model = keep.model.to("cpu").eval()
    enc = loaded.processor(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    assert [g["label"] for g in got] == [loaded.task.labels[i] for i in probs.argmax(-1)]  # type: ignore[attr-defined]
    assert [g["score"] for g in got] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    d = tmp_path_factory.mktemp("tiny-resnet")
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], layer_type="basic")
    ResNetForImageClassification(cfg).save_pretrained(d)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def test_prompt_tuning_refuses_image_and_masked_lm_heads_before_writing(
    tiny_model_dir: Path, tiny_resnet: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    npz = tmp_path / "toy.npz"
    np.savez(
        npz,
        train_images=rng.integers(0, 255, (20, 28, 28)).astype(np.uint8),
        train_labels=(np.arange(20) % 2).reshape(-1, 1).astype(np.uint8),
    )
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("i need help with my card please\n" * 40, encoding="utf-8")
    cases = [
        (tiny_resnet, "classify", npz, "accuracy", "image-classification"),
        (tiny_model_dir, {"name": "masked_lm", "block_size": 16}, corpus, "loss", "masked-lm"),
    ]
    for i, (model, task, data, metric, kind) in enumerate(cases):
        out = tmp_path / f"run{i}"
        r = {
            "model": str(model),
            "task": task,
            "data": {"train": str(data)},
            "method": "prompt_tuning",
            "evaluation": {"metric": metric},
            "output": {"dir": str(out)},
        }
        with pytest.raises(RecipeError, match=rf"method prompt_tuning .*head kind '{kind}'"):
            finetune(r)
        assert not out.exists()


# --------------------------------------------------------------------------- causal LMs
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny Llama with a ChatML word-level tokenizer."""
    from finekit.tasks.chat.task import CHATML

    special = ["<unk>", "<eos>", "<|im_start|>", "<|im_end|>"]
    words = sorted({w for s in SENTENCES for w in s.split()} | {"system", "user", "assistant"})
    return build_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama-pt"),
        special + words,
        specials=special,
        chat_template=CHATML,
    )


SENTENCES = [
    "the king speaks in the hall .",
    "the queen weeps by the sea .",
    "a knight fights at the gate .",
    "hello friend we are happy to help .",
    "what time do you open ?",
]


def _lm_recipe(model: Path, data: Path, out: Path, task: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": str(model),
        "task": task,
        "data": {"train": str(data), "validation_fraction": 0.2},
        "method": {"name": "prompt_tuning", "num_virtual_tokens": N_VIRTUAL},
        "training": {
            "max_steps": 20,
            "batch_size": 8,
            "eval_batch_size": 16,
            "lr": 1e-1,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "max_length": 64,
            "checkpoint_each_epoch": False,
        },
        "evaluation": {"metric": "loss", "train_eval_samples": 0, "retention": "off"},
        "output": {"dir": str(out), "save_checkpoints": False},
    }


def test_prompt_tuning_causal_lm_scores_without_virtual_positions_and_generates(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(rng.choice(SENTENCES[:3]) for _ in range(300)), encoding="utf-8")
    keep = KeepModel()
    r = _lm_recipe(tiny_llama, corpus, tmp_path / "run", {"name": "causal_lm", "block_size": 16})
    result = finetune(r, callbacks=[keep])
    run = result.summary
    assert run["train"]["trainable_parameters"] == N_VIRTUAL * 32
    base = _weights(tiny_llama)
    assert all(torch.equal(v, base[k]) for k, v in _weights(result.model_dir).items())
    val = run["metrics"]["validation"]
    # A random 2-layer LM: a prompt of 8 vectors moves its perplexity only a little.
    assert val["perplexity_after"] < val["perplexity_before"]
    losses = _train_losses(result.run_dir)
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    # peft 0.21 returns logits for the virtual tokens too: token_nll drops them, so the
    # scored tokens are the real ones and the base view scores as the plain base model.
    model = keep.model.to("cpu").eval()
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 9]]),
        "attention_mask": torch.ones(1, 5, dtype=torch.long),
        "labels": torch.tensor([[5, 6, 7, 8, 9]]),
    }
    with torch.no_grad():
        assert model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits.shape[1] in (
            5,
            5 + N_VIRTUAL,
        )
        nll, n = token_nll(model, batch)
        assert int(n) == 4
        with model.disable_adapter():
            plain = token_nll(model, batch)[0]
        from transformers import AutoModelForCausalLM

        ref = token_nll(AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), batch)[0]
    torch.testing.assert_close(plain, ref)
    assert not torch.allclose(nll, plain)  # the prompt changes the scores
    loaded = load_run(result.run_dir, device="cpu")
    out = loaded.predict(["the king", "a knight"])
    assert len(out) == 2 and all(isinstance(o["text"], str) for o in out)


def test_prompt_tuning_chat_generates_and_refuses_packing(tiny_llama: Path, tmp_path: Path) -> None:
    data = tmp_path / "chats.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for i in range(40):
            msgs = [
                {"role": "user", "content": "what time do you open ?"},
                {"role": "assistant", "content": SENTENCES[3]},
            ]
            f.write(json.dumps({"conversation_id": f"c{i}", "messages": msgs}) + "\n")
    task = {"name": "chat", "max_new_tokens": 8, "generation_samples": 4}
    r = _lm_recipe(tiny_llama, data, tmp_path / "run", task)
    with pytest.raises(RecipeError, match=r"task\.packing: prompt_tuning"):
        Recipe.from_dict({**r, "task": {**task, "packing": True}})
    result = finetune(r)
    val = result.metrics["validation"]
    assert val["loss_after"] < val["loss_before"]
    assert "token_f1" in val and "token_f1_before" in val  # generation before and after
    loaded = load_run(result.run_dir, device="cpu")
    replies = loaded.predict(pd.DataFrame({"messages": [[{"role": "user", "content": "hi"}]]}))
    assert len(replies) == 1 and isinstance(replies[0]["text"], str)


# =========================================================================== text mixup
def test_mixup_fields_are_checked_per_task() -> None:
    def recipe(augment: dict[str, Any], task: str = "classify", **data: Any) -> Recipe:
        return Recipe.from_dict(
            {"model": "m", "task": task, "data": {"train": "t.csv", "augment": augment, **data}}
        )

    r = recipe({"mixup": 1.0}).with_overrides({"data.augment.mixup_alpha": 0.2})
    assert r.data.augment.active("text")
    mix = FeatureMixup.from_spec(r.data.augment)
    assert mix is not None and (mix.prob, mix.alpha) == (1.0, 0.2)
    assert FeatureMixup.from_spec(recipe({"mixup": 0.5}).data.augment).alpha == 0.4  # type: ignore[union-attr]
    for task in ("causal_lm", "chat", "masked_lm"):
        with pytest.raises(RecipeError, match=rf"data\.augment\.mixup: task '{task}'"):
            recipe({"mixup": 1.0}, task)
    with pytest.raises(RecipeError, match=r"data\.augment\.mixup_alpha has no effect"):
        recipe({"mixup_alpha": 0.2})
    with pytest.raises(RecipeError, match=r"data\.augment\.mixup_alpha is for text data"):
        recipe({"mixup": 0.5, "mixup_alpha": 0.2}, image_column="path")


def test_feature_mixup_mixes_the_first_head_input_once() -> None:
    head = torch.nn.Linear(4, 2)
    after = torch.nn.Linear(2, 2)
    x = torch.randn(3, 4)
    draw = MixDraw(0.3, torch.tensor([2, 0, 1]))
    with FeatureMixup(1.0, 0.4).applied([head, after], draw):
        got = after(head(x))
    torch.testing.assert_close(got, after(head(0.3 * x + 0.7 * x[[2, 0, 1]])))
    assert after(head(x)).shape == (3, 2)  # hooks removed: plain again
    torch.manual_seed(0)
    lams = [FeatureMixup(1.0, 0.4).draw(8).lam for _ in range(200)]  # type: ignore[union-attr]
    assert all(0 < v < 1 for v in lams) and np.mean([min(v, 1 - v) for v in lams]) < 0.3
    assert sum(FeatureMixup(0.25, 0.4).draw(8) is not None for _ in range(400)) in range(70, 130)
    unused = torch.nn.Linear(4, 4)
    with (
        pytest.raises(ModelError, match="never received features"),
        FeatureMixup(1.0, 0.4).applied([unused], draw),
    ):
        head(x)


def _mixup(r: Recipe, prob: float = 1.0) -> Recipe:
    return r.with_overrides({"data.augment": {"mixup": prob}, "task.label_smoothing": 0.1})


def test_text_mixup_mixes_training_batches_only(
    tiny_recipe: Recipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.nn.functional as F

    calls: list[dict[str, Any]] = []
    applied = FeatureMixup.applied

    def spy(self, modules, draw):  # noqa: ANN001, ANN202
        calls.append({"lam": draw.lam, "modules": [type(m).__name__ for m in modules]})
        return applied(self, modules, draw)

    monkeypatch.setattr(FeatureMixup, "applied", spy)
    losses: list[tuple[float, float]] = []
    real_ce = F.cross_entropy

    def ce(logits, target, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = real_ce(logits, target, *a, **kw)
        losses.append((float(out.detach()), kw.get("label_smoothing", 0.0)))
        return out

    monkeypatch.setattr("finekit.tasks.classify.text.F.cross_entropy", ce)
    r = _mixup(tiny_recipe).with_overrides({"training.epochs": 1})
    result = finetune(r)
    steps = result.train["steps"]
    # One mix per training batch (batch 8, no accumulation): validation, train_eval and the
    # exported model's test evaluation never reach the hook.
    assert len(calls) == steps and steps > 10
    assert all(0 < c["lam"] < 1 for c in calls)
    assert calls[0]["modules"] == ["Linear"]  # BERT's classifier: pooled [CLS] features
    # Each mixed step computes two cross-entropies (the pair), with label smoothing.
    assert len(losses) == 2 * steps and all(ls == 0.1 for _, ls in losses)
    assert result.summary["data"]["augment"]["mixup"] == 1.0
    assert result.summary["data"]["augment"]["mixup_alpha"] == 0.4


def test_text_mixup_loss_is_the_mix_of_the_two_cross_entropies(tiny_recipe: Recipe) -> None:
    from finekit.run.stages import setup as _setup

    setup = _setup(_mixup(tiny_recipe))
    task, model, processor = setup.task, setup.model, setup.loaded.processor
    task.attach(model, setup.groups.head)  # type: ignore[attr-defined]
    enc = task.encode(setup.prepared.splits.train.head(6), processor, "x")
    batch = task.collator(processor)([enc[i] for i in range(6)])
    draw = MixDraw(0.3, torch.tensor([1, 2, 0, 4, 5, 3]))
    task.text_mix.draw = lambda n: draw  # type: ignore[attr-defined,method-assign]
    # Training flag on the model (the loss mixes), dropout layers in eval (deterministic).
    model.eval()
    model.training = True
    got = task.loss(model, batch)
    model.training = False
    plain = task.loss(model, batch)  # eval: never mixed
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    y, perm = batch["labels"], draw.perm
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        pooled = model.bert(**inputs).pooler_output  # what BERT's classifier receives
        mixed = model.classifier(0.3 * pooled + 0.7 * pooled[perm])
        want = 0.3 * ce(mixed, y, label_smoothing=0.1)
        want = want + 0.7 * ce(mixed, y[perm], label_smoothing=0.1)
        unmixed = ce(model.classifier(pooled), y, label_smoothing=0.1)
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)
    assert float(plain.detach()) == pytest.approx(float(unmixed), rel=1e-5)
    assert not torch.allclose(mixed, model.classifier(pooled))  # the mix changed the logits


def test_text_mixup_run_resumed_mid_epoch_matches_uninterrupted(
    tiny_recipe: Recipe, tmp_path: Path
) -> None:
    base = tiny_recipe.with_overrides({"training.checkpoint_every": 5, "training.epochs": 2})
    r = _mixup(base, prob=0.7)
    full = finetune(r.with_overrides({"output.dir": str(tmp_path / "full")}))
    plain = finetune(base.with_overrides({"output.dir": str(tmp_path / "plain")}))
    broken = r.with_overrides({"output.dir": str(tmp_path / "broken")})
    with pytest.raises(CallbackError):
        finetune(broken, callbacks=[CrashAtStep(8)])
    resumed = finetune(broken, resume=True)
    assert resumed.train["resumed_from"].endswith("step-00000005")
    wa, wb, wp = _weights(full.model_dir), _weights(resumed.model_dir), _weights(plain.model_dir)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(wa[k], wp[k]) for k in wa)  # mixup changed training
    assert resumed.metrics["test"] == full.metrics["test"]
    # The last logged windows lie after the resume point (the first resumed one is short).
    assert _train_losses(resumed.run_dir)[-4:] == pytest.approx(
        _train_losses(full.run_dir)[-4:], rel=1e-5
    )
