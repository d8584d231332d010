"""Retention for encoder classifiers whose checkpoint ships a masked-LM head: the head is set
on the tuned encoder and the general reference's pseudo-perplexity is measured before,
per evaluation and after (issue 3: "for encoders: masked-LM pseudo-perplexity")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CLASS_WORDS, FILLER, build_tiny_bert_mlm

from finekit import Recipe, finetune
from finekit.errors import RecipeError
from finekit.evaluate.retention import MaskedLMHead, reference_sentences
from finekit.tasks.lm.masked import pseudo_perplexity

PPL = "general_pseudo_perplexity"


@pytest.fixture(scope="module")
def bert_with_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with its MLM head, given a little masked-LM training on general
    English (a skill to lose), over a vocabulary with the toy intents' words."""
    from transformers import DataCollatorForLanguageModeling

    def pretrain(model: Any, tok: Any) -> None:
        collate = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
        enc = [tok(s, truncation=True, max_length=48) for s in reference_sentences(None)[0]]
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(60):
            idx = torch.randperm(len(enc), generator=g)[:32].tolist()
            batch = collate([{"input_ids": enc[i]["input_ids"]} for i in idx])
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()

    toy = {w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER)
    return build_tiny_bert_mlm(tmp_path_factory.mktemp("bert-mlm-head"), toy, pretrain)


def _recipe(model: Path, toy_data: dict, tmp_path: Path, **over: Any) -> Recipe:
    ref = tmp_path / "general-40.txt"
    ref.write_text("\n".join(reference_sentences(None)[0][:40]) + "\n", encoding="utf-8")
    r = Recipe.from_dict(
        {
            "model": str(model),
            "data": {"train": str(toy_data["train"]), "test": str(toy_data["test"])},
            "training": {
                "auto": False,  # the whole schedule, last weights: forgetting is measured
                "epochs": 4,
                "batch_size": 16,
                "lr": 1e-2,
                "precision": "fp32",
            },
            "evaluation": {"retention_reference": str(ref)},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    return r.with_overrides(over) if over else r


def _independent_ppl(base: Path, encoder_dir: Path, ref: Path) -> float:
    """The base checkpoint's MLM model with the exported classifier's encoder weights."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    mlm = AutoModelForMaskedLM.from_pretrained(base)
    if encoder_dir != base:
        clf = AutoModelForSequenceClassification.from_pretrained(encoder_dir)
        missing, _ = mlm.bert.load_state_dict(clf.bert.state_dict(), strict=False)
        assert not missing
        mlm.tie_weights()
    tok = AutoTokenizer.from_pretrained(base)
    texts = ref.read_text().splitlines()
    return pseudo_perplexity(mlm, tok, texts, 64, 128)


def test_classifier_retention_has_pseudo_perplexity_of_the_tuned_encoder(
    bert_with_head: Path, toy_data: dict, tmp_path: Path
) -> None:
    r = _recipe(bert_with_head, toy_data, tmp_path)
    run = finetune(r).summary
    ret = run["retention"]
    ref = tmp_path / "general-40.txt"
    # Before = the base checkpoint's own MLM on the reference.
    assert ret["before"][PPL] == pytest.approx(
        _independent_ppl(bert_with_head, bert_with_head, ref), rel=1e-4
    )
    # After = the head on the exported (tuned) encoder, computed here independently.
    want = _independent_ppl(bert_with_head, tmp_path / "run" / "model", ref)
    assert ret["after"][PPL] == pytest.approx(want, rel=1e-4)
    assert ret[f"{PPL}_increase"] == pytest.approx(ret["after"][PPL] / ret["before"][PPL] - 1)
    # Classification at lr 1e-2 moves the encoder: general masked-LM skill is lost, measured.
    assert ret[f"{PPL}_increase"] > 0.05
    # A strong pull toward the base (L2-SP) keeps more of it: the measure tells them apart.
    held = finetune(
        r.with_overrides({"training.l2sp": 10.0, "output.dir": str(tmp_path / "l2sp")})
    ).summary["retention"]
    assert held[f"{PPL}_increase"] < ret[f"{PPL}_increase"] / 2, held[f"{PPL}_increase"]
    # Per evaluation in metrics.jsonl, beside the embedding measures.
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    per_eval = [x for x in rows if PPL in x]
    assert len(per_eval) >= 3 and all("retention_similarity" in x for x in per_eval)
    assert len(ret["per_evaluation"]) >= 3 and PPL in ret["per_evaluation"][-1]


def test_no_head_no_pseudo_perplexity(
    tiny_model_dir: Path, bert_with_head: Path, toy_data: dict, tmp_path: Path
) -> None:
    # A checkpoint that is an encoder alone (like sentence-transformers' MiniLM).
    assert MaskedLMHead.from_checkpoint(str(tiny_model_dir)) is None
    assert MaskedLMHead.from_checkpoint(str(bert_with_head)) is not None
    # Choosing the checkpoint by it needs the head: refused, naming what the run measures.
    r = _recipe(tiny_model_dir, toy_data, tmp_path, **{"evaluation.metric": PPL})
    with pytest.raises(RecipeError, match="retention_similarity, retention_cosine"):
        finetune(r)
    # Switched off: embedding measures only.
    r = _recipe(
        bert_with_head,
        toy_data,
        tmp_path,
        **{"evaluation.retention_mlm": False, "training.epochs": 1},
    )
    run = finetune(r).summary
    assert (
        PPL not in run["retention"]["after"] and "retention_similarity" in run["retention"]["after"]
    )


def test_lora_run_scores_the_adapted_encoder(
    bert_with_head: Path, toy_data: dict, tmp_path: Path
) -> None:
    """During LoRA training the head sits on the peft-wrapped encoder (adapters active);
    at the end on the merged export. Both give a score; the base weights stay untouched."""
    r = _recipe(bert_with_head, toy_data, tmp_path, method={"name": "lora", "r": 4})
    run = finetune(r).summary
    ret = run["retention"]
    assert ret["per_evaluation"] and all(PPL in x for x in ret["per_evaluation"])
    want = _independent_ppl(bert_with_head, tmp_path / "run" / "model", tmp_path / "general-40.txt")
    assert ret["after"][PPL] == pytest.approx(want, rel=1e-4)
    assert ret["after"][PPL] != pytest.approx(ret["before"][PPL], rel=1e-6)  # adapters count
