"""Task `causal_lm` on a tiny random Llama with a word-level tokenizer built in the test:
plain-text reading, packing, perplexity falls with training (before/after in run.json),
general-text retention, generation through `load_run`, LoRA exports a plain model."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import build_tiny_llama

from finekit import finetune, load_run
from finekit.data.readers import detect_format, read_table
from finekit.errors import DataError
from finekit.evaluate.retention import reference_sentences
from finekit.recipe import Recipe
from finekit.tasks import build_task
from finekit.tasks.lm.causal import BlockCollator, CausalLMConfig, CausalLMTask, tail_holdout

# The "domain": short sentences built from fixed templates, so the next word is very
# predictable after training and unpredictable for the random model.
SUBJECTS = ["the king", "the queen", "a knight", "the fool", "my lord"]
VERBS = ["speaks", "weeps", "laughs", "sleeps", "fights"]
PLACES = ["in the hall", "at the gate", "by the sea", "on the hill"]


def domain_text(n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)} ." for _ in range(n)]
    return "\n".join(lines) + "\n"


def _vocab() -> list[str]:
    words = {w for phrase in SUBJECTS + VERBS + PLACES for w in phrase.split()} | {"."}
    general = {w.lower() for s in reference_sentences(None)[0] for w in s.split()}
    return ["<unk>", "<eos>", *sorted(words | general)]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama (hidden 32) and a word-level tokenizer, saved as an HF folder."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), _vocab())


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    for i in range(4):
        (d / f"part{i}.txt").write_text(domain_text(60, seed=i), encoding="utf-8")
    return d


def _recipe(model_dir: Path, corpus: Path, out: Path, **over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "model": str(model_dir),
        "task": {"name": "causal_lm", "block_size": 16},
        "data": {"train": str(corpus), "validation_fraction": 0.2},
        "method": "full",
        "training": {
            "max_steps": 40,
            "batch_size": 8,
            "eval_batch_size": 16,
            "lr": 3e-3,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "checkpoint_each_epoch": False,
        },
        "evaluation": {"metric": "perplexity", "train_eval_samples": 8, "every_steps": 20},
        "output": {"dir": str(out), "save_checkpoints": False},
    }
    for key, value in over.items():
        r[key] = {**r[key], **value} if isinstance(r[key], dict) else value
    return r


# --------------------------------------------------------------------------- data
def test_txt_folder_reads_one_row_per_file(corpus_dir: Path) -> None:
    assert detect_format(str(corpus_dir)) == "text"
    assert detect_format(str(corpus_dir / "part0.txt")) == "text"
    df = read_table(str(corpus_dir))
    assert list(df.columns) == ["text", "source"] and len(df) == 4
    assert df["source"].tolist() == [str(corpus_dir / f"part{i}.txt") for i in range(4)]
    assert df["text"][0] == (corpus_dir / "part0.txt").read_text()
    r = Recipe.from_dict({"model": "x", "task": "classify", "data": {"train": str(corpus_dir)}})
    assert r.task.modality == "text"  # type: ignore[attr-defined]  # not an image folder


def test_bad_text_inputs_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    with pytest.raises(DataError, match="empty.txt is empty"):
        read_table(str(empty))
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(DataError, match="blob.txt is binary"):
        read_table(str(binary))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="latin.txt is not UTF-8"):
        read_table(str(latin))
    folder = tmp_path / "nothing"
    folder.mkdir()
    with pytest.raises(DataError, match="nothing has no text files"):
        read_table(str(folder), "text")
    only_empty = tmp_path / "blank"
    only_empty.mkdir()
    (only_empty / "a.txt").write_text("")
    with pytest.raises(DataError, match=r"blank: every text file is empty \(.*a.txt"):
        read_table(str(only_empty))


def test_tail_holdout_is_contiguous_and_cut_at_a_line() -> None:
    df = pd.DataFrame({"text": [domain_text(50, 0), domain_text(50, 1)], "source": ["a", "b"]})
    rest, held = tail_holdout(df, 0.3, "text", "corpus", "validation")
    assert "".join(rest["text"]) + "".join(held["text"]) == "".join(df["text"])
    assert held["text"][0].split("\n")[0] in domain_text(50, 1).split("\n")  # a whole line
    share = sum(map(len, held["text"])) / sum(map(len, df["text"]))
    assert 0.25 < share < 0.35
    with pytest.raises(DataError, match="too small to hold out"):
        tail_holdout(pd.DataFrame({"text": ["x"]}), 0.5, "text", "tiny.txt", "validation")


def test_packing_puts_eos_between_documents_in_full_blocks(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    task = CausalLMTask(CausalLMConfig(block_size=8))
    docs = pd.DataFrame({"text": ["the king speaks .", "the queen weeps in the hall ."] * 5})
    ds = task.encode(docs, tok, "train")
    assert len(ds) > 0 and all(len(f["input_ids"]) == 8 for f in ds.features)
    stream = [t for f in ds.features for t in f["input_ids"]]
    first = tok("the king speaks .", add_special_tokens=False)["input_ids"]
    assert stream[: len(first) + 1] == [*first, tok.eos_token_id]
    total = 5 * (len(first) + 1 + len(tok("the queen weeps in the hall .")["input_ids"]) + 1)
    assert task.counts["train"]["tokens"] + task.counts["train"]["tokens_dropped"] == total
    # Evaluation keeps the short remainder (every held-out token is scored), padded.
    ev = task.encode(docs, tok, "validation")
    assert [len(f["input_ids"]) for f in ev.features] == [8] * (total // 8)  # 1 left: no target
    docs = pd.concat([docs, pd.DataFrame({"text": ["my lord"]})])
    ev = task.encode(docs, tok, "validation")
    assert sum(len(f["input_ids"]) for f in ev.features) == total + 3  # a short last block
    batch = BlockCollator(tok.pad_token_id)(ev.features[-2:])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    # Without packing, each document is its own example ending in EOS.
    unpacked = CausalLMTask(CausalLMConfig(block_size=64, packing=False)).encode(docs, tok, "x")
    assert len(unpacked) == 11 and unpacked[0]["input_ids"][-1] == tok.eos_token_id


def test_recipe_rejects_a_classify_metric(tiny_llama: Path, corpus_dir: Path) -> None:
    from finekit.data.splits import read_splits
    from finekit.errors import RecipeError

    r = Recipe.from_dict(_recipe(tiny_llama, corpus_dir, Path("unused")))
    r = r.with_overrides({"evaluation.metric": "accuracy"})
    with pytest.raises(RecipeError, match="allowed: perplexity, loss"):
        build_task(r.task).prepare(read_splits(r.data), r)


# --------------------------------------------------------------------------- end to end
def test_training_lowers_perplexity_and_reports_before_after(
    tiny_llama: Path, corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = finetune(_recipe(tiny_llama, corpus_dir, tmp_path / "run"))
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["status"] == "completed"
    val = run["metrics"]["validation"]
    assert val["perplexity_after"] == val["perplexity"]
    assert val["perplexity_after"] < 0.8 * val["perplexity_before"]
    assert val["tokens"] > 0 and val["loss"] == pytest.approx(
        float(torch.tensor(val["perplexity"]).log()), rel=1e-6
    )
    ret = run["retention"]
    assert set(ret) >= {
        "general_perplexity_before",
        "general_perplexity_after",
        "general_perplexity_increase",
    }
    assert ret["general_perplexity_increase"] == pytest.approx(
        ret["general_perplexity_after"] / ret["general_perplexity_before"] - 1
    )
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "validation"]
    assert evals and "general_perplexity" in evals[0] and "perplexity" in evals[0]
    assert run["data"]["tokens"]["train"]["blocks"] > 0
    assert "Perplexity before and after" in (result.run_dir / "report.html").read_text()
    # The exported model generates through load_run (greedy, max_new_tokens).
    loaded = load_run(result.run_dir, device="cpu")
    out = loaded.predict(["the king", "a knight fights"])
    assert len(out) == 2 and all(isinstance(o["text"], str) and o["text"] for o in out)
    assert {w.strip(".") for w in out[0]["text"].split()} <= set(_vocab()) | {""}
    # `finekit predict` prints each prompt with its continuation, or writes a file.
    from finekit.cli import main

    assert main(["predict", str(result.run_dir), "the queen"]) == 0
    assert capsys.readouterr().out.startswith("the queen\t")
    prompts = tmp_path / "prompts.csv"
    pd.DataFrame({"text": ["my lord", "the fool"]}).to_csv(prompts, index=False)
    assert (
        main(["predict", str(result.run_dir), "-i", str(prompts), "-o", str(tmp_path / "o.csv")])
        == 0
    )
    assert pd.read_csv(tmp_path / "o.csv")["generated_text"].notna().all()


def test_lora_exports_a_merged_plain_model(
    tiny_llama: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from finekit.methods.lora import default_targets

    assert default_targets("llama", "causal-lm") == "all-linear"
    assert default_targets("bert", "sequence-classification") != "all-linear"
    r = _recipe(
        tiny_llama,
        corpus_dir,
        tmp_path / "run",
        method={"name": "lora"},
        training={"max_steps": 6, "lr": 1e-2},
        evaluation={"every_steps": None, "train_eval_samples": 0},
    )
    result = finetune(r)
    run = json.loads((result.run_dir / "run.json").read_text())
    adapter = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["task_type"] == "CAUSAL_LM"
    assert not adapter.get("modules_to_save")  # the LM head is pre-trained, not new
    targets = {t.rsplit(".", 1)[-1] for t in adapter["target_modules"]}
    assert {"q_proj", "v_proj", "gate_proj", "down_proj"} <= targets
    plain = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    val = run["metrics"]["validation"]
    assert val["perplexity_before"] > 0 and val["perplexity_after"] > 0


def test_prepare_holds_out_test_then_validation_and_caps_blocks(
    tiny_llama: Path, corpus_dir: Path
) -> None:
    from transformers import AutoTokenizer

    from finekit.data.splits import read_splits

    r = Recipe.from_dict(
        _recipe(
            tiny_llama,
            corpus_dir,
            Path("unused"),
            data={"validation_fraction": 0.1, "test_fraction": 0.1, "max_train_samples": 5},
        )
    )
    task = build_task(r.task)
    prepared = task.prepare(read_splits(r.data), r)
    s = prepared.splits
    whole = "".join((corpus_dir / f"part{i}.txt").read_text() for i in range(4))
    assert (
        "".join(s.train["text"]) + "".join(s.validation["text"]) + "".join(s.test["text"]) == whole
    )  # train, then validation, then test: contiguous, nothing lost
    assert "before the test part" in prepared.info["sources"]["validation"]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    assert len(task.encode(s.train, tok, "train")) == 5  # data.max_train_samples: blocks


@pytest.mark.parametrize(
    ("method", "frozen_embeddings"),
    [("full", False), ({"name": "freeze", "layers": 1}, True), ("lora", True)],
)
def test_methods_apply_to_a_causal_lm(
    tiny_llama: Path, method: Any, frozen_embeddings: bool
) -> None:
    from finekit.methods import MethodContext, build_method
    from finekit.models import family_for
    from finekit.recipe import ModelSpec

    spec = ModelSpec(path=str(tiny_llama))
    family = family_for(spec)
    loaded = family.load(spec, CausalLMTask(CausalLMConfig()).head())
    groups = family.layer_groups(loaded.model)
    assert groups.layers == ["model.layers.0", "model.layers.1"] and groups.head == ["lm_head"]
    r = Recipe.from_dict({"model": "x", "data": {"train": "x.txt"}, "method": method})
    model = build_method(r.method).apply(
        loaded.model, MethodContext(groups, CausalLMTask(CausalLMConfig()).head(), "llama")
    )
    emb = [p for n, p in model.named_parameters() if "embed_tokens" in n]
    assert emb and all(p.requires_grad != frozen_embeddings for p in emb)
    assert any(p.requires_grad for p in model.parameters())


def test_compare_counts_token_blocks_for_a_language_model(
    tiny_llama: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    """Tasks without classes: sizes are training token blocks, perplexity is lower-is-better
    in the gains, and the ladder, curve and report are written."""
    from finekit.experiments.compare import compare

    r = Recipe.from_dict(
        _recipe(tiny_llama, corpus_dir, tmp_path / "unused", training={"max_steps": 6})
    )
    out = tmp_path / "cmp"
    result = compare(r, "scratch", "6,full", 1, out, echo=lambda _: None, min_steps=0)
    assert result["size_unit"] == "training token blocks"
    assert result["higher_is_better"] is False
    cells = {(c["rung"], c["size"]): c for c in result["cells"]}
    assert cells[("recipe", 6)]["train_examples"] == 6
    assert cells[("recipe", "full")]["train_examples"] > 6
    ppl = {
        k: json.loads((out / "runs" / k[0] / str(k[1]) / "seed-42" / "run.json").read_text())[
            "metrics"
        ][result["split"]]["perplexity"]
        for k in cells
    }
    (g,) = [g for g in result["gains"] if g["size"] == "full"]
    assert g["values"] == [pytest.approx(ppl[("scratch", "full")] - ppl[("recipe", "full")])]
    assert (out / "report.html").is_file() and (out / "learning_curve.png").stat().st_size > 1000


def test_check_takes_one_batch_of_blocks_from_a_corpus(
    tiny_llama: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    """A corpus row is a whole document of many blocks: `finekit check` steps on one batch,
    and writes nothing."""
    from finekit.run import make_recipe
    from finekit.run.check import check

    res = check(make_recipe(_recipe(tiny_llama, corpus_dir, tmp_path / "run")))
    assert res.loss > 0 and res.grad_norm > 0
    assert res.recipe.training.max_length == 16  # the task's blocks
    assert not (tmp_path / "run").exists()
