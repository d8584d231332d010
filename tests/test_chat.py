"""Task `chat` on a tiny random Llama with a word-level tokenizer carrying a ChatML template:
conversation reading (messages, prompt/response, Taskmaster dialogue JSON), the assistant
mask, bad conversations, truncation, generation scores and rules, and an end-to-end run
whose held-out assistant loss falls and whose replies learn the house phrase."""

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
from finekit.data.readers import read_table
from finekit.data.splits import Splits
from finekit.errors import DataError, ModelError, RecipeError
from finekit.evaluate.generation import check_rules, exact_match, rouge_l, token_f1
from finekit.recipe import Recipe, RuleSpec
from finekit.tasks.chat.task import CHATML, ChatConfig, ChatTask
from finekit.tasks.lm.causal import IGNORE

QUESTIONS = [
    "what time do you open ?",
    "can i order a latte ?",
    "do you have oat milk ?",
    "is the cafe open today ?",
    "i want a large coffee please",
    "where is the shop ?",
]
PHRASE = "hello friend we are happy to help ."
WORDS = {w for q in QUESTIONS for w in q.split()} | set(PHRASE.split())
SPECIAL = ["<unk>", "<eos>", "<|im_start|>", "<|im_end|>"]


def _vocab() -> list[str]:
    return [*SPECIAL, "system", "user", "assistant", "be", "brief", "thanks", *sorted(WORDS)]


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama and a word-level tokenizer with ChatML specials + template."""
    return build_tiny_llama(
        tmp_path_factory.mktemp("tiny-chat"),
        _vocab(),
        specials=SPECIAL,
        chat_template=CHATML,
        max_positions=256,
    )


def _tok(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _conv(q: str, a: str = PHRASE) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def _task(**cfg: Any) -> ChatTask:
    t = ChatTask(ChatConfig(**cfg))
    t.max_length = 128
    return t


def _frame(convs: list[list[dict[str, str]]]) -> pd.DataFrame:
    return pd.DataFrame({"messages": convs})


# --------------------------------------------------------------------------- mask
def test_mask_covers_exactly_replies_end_of_turn_and_eos(tiny_chat: Path) -> None:
    tok = _tok(tiny_chat)
    task = _task(system_prompt="be brief")
    conv = [*_conv(QUESTIONS[0], "we are happy"), *_conv(QUESTIONS[1], "thanks friend")]
    rows = task.conversations(_frame([conv]), "toy")
    assert rows["messages"][0][0] == {"role": "system", "content": "be brief"}
    ds = task.encode(rows, tok, "train")
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    supervised = [
        tok.convert_ids_to_tokens(i) for i, lab in zip(ids, labels, strict=True) if lab != IGNORE
    ]
    assert supervised == [
        "we",
        "are",
        "happy",
        "<|im_end|>",
        "thanks",
        "friend",
        "<|im_end|>",
        "<eos>",
    ]
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels, strict=True))
    assert ids[-1] == tok.eos_token_id
    # Every supervised token lies inside an assistant turn (after "<|im_start|> assistant").
    toks = tok.convert_ids_to_tokens(ids)
    role = None
    for k, (t, lab) in enumerate(zip(toks, labels, strict=True)):
        if k and toks[k - 1] == "<|im_start|>":
            role = t
        if lab != IGNORE and t != "<eos>":
            assert role == "assistant", (k, t)
    from finekit.tasks.chat.task import show_mask

    shown = show_mask(tok, ids, labels)
    assert "[[we are happy <|im_end|>]]" in shown and "[[thanks friend <|im_end|> <eos>]]" in shown


def test_collator_pads_with_ignored_labels(tiny_chat: Path) -> None:
    tok = _tok(tiny_chat)
    task = _task()
    ds = task.encode(
        task.conversations(_frame([_conv("hello"), _conv(QUESTIONS[4])]), "x"), tok, "v"
    )
    batch = task.collator(tok)(ds.features)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    assert batch["input_ids"].shape[0] == 2


def test_missing_template_needs_default_template(tiny_chat: Path) -> None:
    tok = _tok(tiny_chat)
    tok.chat_template = None
    rows = _task().conversations(_frame([_conv("hello")]), "x")
    with pytest.raises(ModelError, match="has no chat template; set task.default_template: chatml"):
        _task().encode(rows, tok, "train")
    task = _task(default_template="chatml")
    assert len(task.encode(rows, tok, "train")) == 1 and tok.chat_template == CHATML


# --------------------------------------------------------------------------- bad data
def test_unknown_role_and_empty_reply_are_named(tiny_chat: Path) -> None:
    bad_role = pd.DataFrame(
        {
            "conversation_id": ["c1", "c2"],
            "messages": [_conv("hi"), [{"role": "robot", "content": "beep"}, *_conv("hi")]],
        }
    )
    with pytest.raises(DataError, match="conversation c2: unknown role 'robot'"):
        _task().conversations(bad_role, "toy.jsonl")
    empty = pd.DataFrame(
        {
            "conversation_id": ["c1", "c2", "c3"],
            "messages": [_conv("hi"), _conv("hi", " "), [_conv("hi")[0]]],
        }
    )
    with pytest.raises(DataError, match=r"toy.jsonl: conversation c2 has an empty assistant turn"):
        _task().conversations(empty, "toy.jsonl")
    task = _task(on_bad_conversation="skip")
    rows = task.conversations(empty, "toy.jsonl", "train")
    assert rows["conversation"].tolist() == ["c1"]
    assert task.skipped["train"] == {"empty_reply": 1, "no_reply": 1}


def test_overlong_conversations_are_truncated_and_counted(tiny_chat: Path) -> None:
    tok = _tok(tiny_chat)
    task = _task()
    task.max_length = 20  # the short exchange takes 16 tokens
    long_user = " ".join(["coffee"] * 30)
    rows = task.conversations(
        _frame([_conv("hi"), _conv(QUESTIONS[0], PHRASE * 2), _conv(long_user)]), "x"
    )
    ds = task.encode(rows, tok, "train")
    assert task.truncation["train"] == {
        "max_length": 20,
        "truncated": 2,
        "skipped_all_replies_truncated": 1,  # the long question left no reply token
    }
    assert len(ds) == 2 and all(len(f["input_ids"]) <= 20 for f in ds.features)


def test_packing_rows_restart_positions_and_never_target_a_boundary(tiny_chat: Path) -> None:
    tok = _tok(tiny_chat)
    task = _task(packing=True)
    task.max_length = 64
    rows = task.conversations(_frame([_conv(q) for q in QUESTIONS[:6]]), "toy")
    plain = _task().encode(rows, tok, "train")
    packed = task.encode(rows, tok, "train")
    assert len(packed) < len(plain) and all(len(f["input_ids"]) <= 64 for f in packed.features)
    assert task.counts["train"]["packed_rows"] == len(packed)
    # Every conversation is in a row, in order, with its own positions and its own targets
    # (the first token of each, the boundary, is never a target).
    flat = [
        (f["input_ids"][k], f["labels"][k], f["position_ids"][k])
        for f in packed.features
        for k in range(len(f["input_ids"]))
    ]
    k = 0
    for f in plain.features:
        n = len(f["input_ids"])
        ids, labels, pos = zip(*flat[k : k + n], strict=True)
        assert list(ids) == f["input_ids"] and list(pos) == list(range(n))
        assert labels[0] == IGNORE and list(labels[1:]) == f["labels"][1:]
        k += n
    assert k == len(flat)
    batch = task.collator(tok)(packed.features[:2])
    assert "position_ids" in batch and batch["position_ids"].shape == batch["input_ids"].shape


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_conversations_do_not_see_each_other(tiny_chat: Path, attention: str) -> None:
    """Packed rows give each conversation exactly the loss it has alone: positions restart
    and, with no 2-D mask and no cache, transformers builds the block-diagonal causal mask
    (with the default cache it would not: the second sequence would see the first)."""
    from transformers import AutoModelForCausalLM

    from finekit.tasks.chat.task import check_packing
    from finekit.tasks.lm.causal import token_nll

    model = AutoModelForCausalLM.from_pretrained(tiny_chat, attn_implementation=attention).eval()
    check_packing(model)  # the pre-flight passes on this model
    tok = _tok(tiny_chat)
    task = _task(packing=True)
    rows = task.conversations(_frame([_conv(q) for q in QUESTIONS[:4]]), "toy")
    packed = task.encode(rows, tok, "train")
    plain = _task().encode(rows, tok, "train")
    assert len(packed) == 1  # all four share one row
    with torch.no_grad():
        nll_packed, n_packed = token_nll(model, task.collator(tok)(packed.features))
        alone = [token_nll(model, task.collator(tok)([f])) for f in plain.features]
    assert int(n_packed.sum()) == sum(int(n.sum()) for _, n in alone)
    total_alone = sum(float(x.sum()) for x, _ in alone)
    assert float(nll_packed.sum()) == pytest.approx(total_alone, rel=1e-5)
    # The same row with the cache on (the default) leaks across conversations.
    ids = task.collator(tok)(packed.features)
    with torch.no_grad():
        leaky = model(input_ids=ids["input_ids"], position_ids=ids["position_ids"]).logits
        clean = model(
            input_ids=ids["input_ids"], position_ids=ids["position_ids"], use_cache=False
        ).logits
    assert not torch.allclose(leaky, clean, atol=1e-4)


def test_packing_pre_flight_refuses_a_model_that_leaks() -> None:
    from finekit.tasks.chat.task import check_packing

    class Leaky(torch.nn.Module):  # ignores position_ids: a running sum over the row
        config = type("C", (), {"vocab_size": 10})()

        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

        def forward(self, input_ids, position_ids=None, use_cache=None):  # noqa: ANN001
            return type("O", (), {"logits": self.emb(input_ids).cumsum(1)})()

    with pytest.raises(ModelError, match="task.packing"):
        check_packing(Leaky())


# --------------------------------------------------------------------------- readers
def _taskmaster(path: Path) -> None:
    dialogs = [
        {
            "conversation_id": f"dlg-{i}",
            "vertical": "Coffee",
            "instructions": "order a drink",
            "utterances": [
                {"index": 0, "speaker": "user", "text": "can i order a latte ?"},
                {"index": 1, "speaker": "assistant", "text": "we are happy to help ."},
                {"index": 2, "speaker": "user", "text": "thanks"},
            ],
        }
        for i in range(10)
    ]
    path.write_text(json.dumps(dialogs), encoding="utf-8")


def test_taskmaster_dialogue_json_maps_to_messages(tmp_path: Path) -> None:
    path = tmp_path / "dialogs.json"
    _taskmaster(path)
    df = read_table(str(path))
    r = Recipe.from_dict(
        {
            "model": "x",
            "task": {"name": "chat", "system_prompt": "be brief"},
            "data": {"train": str(path), "validation_fraction": 0.2},
            "evaluation": {"metric": "loss"},
        }
    )
    task = ChatTask(r.task)  # type: ignore[arg-type]
    prepared = task.prepare(Splits(train=df, sources={"train": str(path)}), r)
    s = prepared.splits
    assert len(s.train) == 8 and len(s.validation) == 2  # whole conversations
    assert set(s.train["conversation"]).isdisjoint(s.validation["conversation"])
    assert s.train["messages"][0] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "can i order a latte ?"},
        {"role": "assistant", "content": "we are happy to help ."},
        {"role": "user", "content": "thanks"},
    ]
    # Speakers the mapping does not know are named.
    bad = ChatTask(ChatConfig(dialogue={"roles": {"user": "user"}}))
    with pytest.raises(DataError, match="conversation dlg-0: unknown role 'assistant' in turn 1"):
        bad.conversations(df, str(path))
    # The house-style helper greets in the first reply only, once.
    from finekit.data.dialogue import apply_house_style

    styled = apply_house_style([*_conv("hi", "yes"), *_conv("ok", "bye")], "Hello! ")
    assert [m["content"] for m in styled] == ["hi", "Hello! yes", "ok", "bye"]
    assert apply_house_style(styled, "Hello! ") == styled
    # prompt/response columns are one exchange each.
    pr = ChatTask(ChatConfig()).conversations(
        pd.DataFrame({"prompt": ["hi"], "response": ["yo"]}), "x"
    )
    assert pr["messages"][0] == _conv("hi", "yo")


@pytest.mark.integration
def test_real_taskmaster_coffee_file() -> None:
    path = (
        Path(__file__).resolve().parents[2]
        / "shared"
        / "data"
        / "taskmaster4-coffee"
        / "data_07.json"
    )
    if not path.exists():
        pytest.skip(f"{path} is absent")
    df = read_table(str(path))
    rows = ChatTask(ChatConfig(on_bad_conversation="skip")).conversations(df, str(path), "train")
    assert len(rows) > 150
    roles = {m["role"] for msgs in rows["messages"] for m in msgs}
    assert roles == {"user", "assistant"}


@pytest.mark.integration
def test_house_style_recipe_prepares_the_real_data() -> None:
    root = Path(__file__).resolve().parents[1]
    if not (root.parent / "shared" / "data" / "taskmaster4-coffee" / "data_00.json").exists():
        pytest.skip("../shared/data/taskmaster4-coffee is absent")
    import os

    from finekit.data.splits import read_splits

    cwd = os.getcwd()
    os.chdir(root)  # the recipe's data paths are relative to the repository root
    try:
        r = Recipe.from_yaml(root / "recipes" / "house-style.yaml")
        prepared = ChatTask(r.task).prepare(read_splits(r.data), r)  # type: ignore[arg-type]
    finally:
        os.chdir(cwd)
    assert prepared.info["conversations"] == {"train": 450, "validation": 50, "test": 210}
    for msgs in prepared.splits.train["messages"][:20]:
        assert msgs[0]["role"] == "system"
        assert next(m for m in msgs if m["role"] == "assistant")["content"].startswith("Hello! ")
    assert r.evaluation.rules is not None and "Hello" in r.evaluation.rules.starts_with


# --------------------------------------------------------------------------- scores
def test_rule_checks_on_hand_made_replies() -> None:
    rules = RuleSpec(starts_with=["Hello", "Hi"], regex=r"coffee", max_words=5)
    assert check_rules("Hello, coffee is ready", rules) == {
        "starts_with": True,
        "regex": True,
        "max_words": True,
    }
    assert check_rules("  Hi there, your coffee is ready now", rules) == {
        "starts_with": True,
        "regex": True,
        "max_words": False,
    }
    assert check_rules("Sure, tea.", rules) == {
        "starts_with": False,
        "regex": False,
        "max_words": True,
    }
    assert check_rules("anything", None) == {}
    with pytest.raises(RecipeError, match="evaluation.rules checks generated replies"):
        Recipe.from_dict(
            {"model": "x", "data": {"train": "x.csv"}, "evaluation": {"rules": {"max_words": 3}}}
        )
    with pytest.raises(Exception, match="not a valid regular expression"):
        RuleSpec(regex="(")


def test_token_f1_rouge_and_exact_match_on_pairs() -> None:
    assert exact_match("The Latte!", "latte") == 1.0
    assert token_f1("a large latte please", "large latte") == pytest.approx(
        2 * (2 / 3) * 1 / (2 / 3 + 1)
    )
    assert token_f1("tea", "coffee") == 0.0 and token_f1("", "") == 1.0
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("cat mat", "the cat sat on the mat") == pytest.approx(
        2 * (1.0 * 2 / 6) / (1 + 2 / 6)
    )


# --------------------------------------------------------------------------- end to end
def _dataset(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(
                json.dumps({"conversation_id": f"c{i}", "messages": _conv(rng.choice(QUESTIONS))})
                + "\n"
            )


def test_training_lowers_reply_loss_and_learns_the_rule(
    tiny_chat: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "chats.jsonl"
    _dataset(data, 80, 0)
    recipe = {
        "model": str(tiny_chat),
        "task": {"name": "chat", "max_new_tokens": 12, "generation_samples": 8},
        "data": {"train": str(data), "validation_fraction": 0.2},
        "method": "full",
        "training": {
            "max_steps": 40,
            "batch_size": 8,
            "eval_batch_size": 16,
            "lr": 3e-3,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "max_length": 64,
            "checkpoint_each_epoch": False,
        },
        "evaluation": {
            "metric": "loss",
            "train_eval_samples": 0,
            "every_steps": 20,
            "retention": "off",
            "rules": {"starts_with": ["hello friend"], "max_words": 20},
        },
        "output": {"dir": str(tmp_path / "run"), "save_checkpoints": False},
    }
    result = finetune(recipe)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["status"] == "completed"
    val = run["metrics"]["validation"]
    assert val["loss_after"] < 0.7 * val["loss_before"]
    assert val["rule_adherence_after"] > val["rule_adherence_before"]
    for key in ("token_f1", "rougeL", "exact_match", "stopped_by_eos", "rule_starts_with"):
        assert f"{key}_before" in val and f"{key}_after" in val
    assert run["data"]["conversations"] == {"train": 64, "validation": 16}
    assert run["data"]["truncation"]["train"]["truncated"] == 0
    assert "Replies before and after" in (result.run_dir / "report.html").read_text()
    samples = (result.run_dir / "eval" / "validation_replies.jsonl").read_text().splitlines()
    assert len(samples) == 8 and json.loads(samples[0])["reply"].startswith("hello friend")
    loaded = load_run(result.run_dir, device="cpu")
    out = loaded.predict(pd.DataFrame({"messages": [[{"role": "user", "content": QUESTIONS[0]}]]}))
    assert isinstance(out[0]["text"], str)
    out = loaded.predict(pd.DataFrame({"prompt": [QUESTIONS[1], QUESTIONS[2]]}))
    assert len(out) == 2 and all(isinstance(o["text"], str) for o in out)
    # Batch replies for a file and the interactive loop (history kept, streamed tokens).
    from finekit.cli import main
    from finekit.serve.chat import chat_loop

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": QUESTIONS[3]}) + "\n", encoding="utf-8")
    answers = tmp_path / "answers.jsonl"
    assert main(["generate", str(result.run_dir), "-i", str(prompts), "-o", str(answers)]) == 0
    row = json.loads(answers.read_text().splitlines()[0])
    assert row["prompt"] == QUESTIONS[3] and row["reply"].startswith("hello friend")
    lines = iter([QUESTIONS[0], QUESTIONS[1], "exit"])
    history = chat_loop(loaded, read=lambda _: next(lines), write=lambda _: None)
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert capsys.readouterr().out.count("hello friend") >= 2  # streamed to stdout
    inputs = iter([QUESTIONS[2]])

    def read_then_eof(_: str) -> str:
        try:
            return next(inputs)
        except StopIteration:
            raise EOFError from None

    assert len(chat_loop(loaded, read=read_then_eof, stream=False, write=lambda _: None)) == 2


@pytest.mark.integration
def test_smollm2_template_supervises_replies_and_im_end() -> None:
    """SmolLM2's own ChatML template (EOS is <|im_end|>): replies + <|im_end|> supervised,
    no extra EOS appended, the template's default system turn is not."""
    from finekit.models.gguf import cache_root

    folder = cache_root() / "smollm2-135m-instruct"
    if not (folder / "tokenizer_config.json").exists():
        pytest.skip(f"{folder} is absent (converted on first use of finekit:smollm2-135m)")
    tok = _tok(folder)
    task = _task()
    rows = task.conversations(
        _frame([[*_conv("One latte", "Sure."), *_conv("Thanks", "Bye!")]]), "x"
    )
    ds = task.encode(rows, tok, "train")
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    sup = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    assert sup == "Sure.<|im_end|>Bye!<|im_end|>"
    assert ids.count(tok.eos_token_id) == ids.count(tok.convert_tokens_to_ids("<|im_end|>"))


def test_a_packed_run_trains_and_reports_its_rows(tiny_chat: Path, tmp_path: Path) -> None:
    data = tmp_path / "chats.jsonl"
    _dataset(data, 60, 0)
    recipe = {
        "model": str(tiny_chat),
        "task": {"name": "chat", "packing": True, "generation_samples": 0},
        "data": {"train": str(data), "validation_fraction": 0.2},
        "training": {
            "max_steps": 20,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "max_length": 128,
            "checkpoint_each_epoch": False,
        },
        "evaluation": {"metric": "loss", "train_eval_samples": 4, "retention": "off"},
        "output": {"dir": str(tmp_path / "run"), "save_checkpoints": False},
    }
    result = finetune(recipe)
    run = json.loads((result.run_dir / "run.json").read_text())
    train = run["data"]["tokens"]["train"]
    assert train["packed_rows"] < train["conversations"] and 0.5 < train["packed_fill"] <= 1.0
    val = run["metrics"]["validation"]
    assert val["loss_after"] < 0.7 * val["loss_before"]  # evaluation itself is not packed
    assert run["train"]["tokens_seen"] > 0


def test_chat_retention_is_general_perplexity_and_ewc_uses_it(
    tiny_chat: Path, tmp_path: Path
) -> None:
    data = tmp_path / "chats.jsonl"
    _dataset(data, 40, 0)
    recipe = {
        "model": str(tiny_chat),
        "task": {"name": "chat", "generation_samples": 0},
        "data": {"train": str(data), "validation_fraction": 0.2},
        "training": {
            "max_steps": 6,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "max_length": 64,
            "checkpoint_each_epoch": False,
            "ewc": 1.0,
            "ewc_batches": 2,
        },
        "evaluation": {"metric": "loss", "train_eval_samples": 0},
        "output": {"dir": str(tmp_path / "run"), "save_checkpoints": False},
    }
    run = json.loads((finetune(recipe).run_dir / "run.json").read_text())
    ret = run["retention"]
    assert ret["general_perplexity_before"] > 1.0 and "general_perplexity_after" in ret
    assert "retention_similarity" not in ret["after"]  # not the encoder-embedding measure
    ewc = run["regularisers"]["ewc"]
    assert ewc["fisher_source"] == "chat.fisher_data" and ewc["fisher_batches"] == 2


@pytest.mark.parametrize("turn", ["first", "last"])
def test_generation_turn_picks_the_scored_reply(tiny_chat: Path, turn: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_chat).eval()
    task = _task(generation_turn=turn, generation_samples=2, max_new_tokens=3)
    conv = [*_conv(QUESTIONS[0], "we are happy"), *_conv(QUESTIONS[1], "thanks friend")]
    rows = task.conversations(_frame([conv, conv]), "toy")
    task.generation_metrics(model, _tok(tiny_chat), rows)
    want = ("we are happy", QUESTIONS[0]) if turn == "first" else ("thanks friend", QUESTIONS[1])
    assert [(x["reference"], x["prompt"]) for x in task._samples] == [want, want]
