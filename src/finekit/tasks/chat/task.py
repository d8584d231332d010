"""Task `chat`: supervised fine-tuning of a causal LM on conversations (instruction/chat SFT).

Rows become conversations (`messages` lists of {role, content}) from a `messages` column,
`prompt`/`response` columns, or dialogue JSON (`task.dialogue` maps e.g. Taskmaster's
`utterances: [{speaker, text}]`). The tokenizer's chat template renders each conversation;
the loss is on assistant tokens only (contents plus the end-of-turn marker, and the EOS
appended after the last reply, so the model learns to stop). Assistant spans are found by
rendering the conversation prefix by prefix and mapping the character spans to tokens
(offsets), which works with any prefix-stable template, no `{% generation %}` needed.

Evaluation: token-weighted loss/perplexity on assistant tokens, and greedy replies to the
held-out conversations' last user turn scored against the real reply (exact match, token
F1, ROUGE-L, stopped_by_eos, `evaluation.rules`), for the base model (`baseline`) and the
tuned one. House style is taught by training replies that follow it (`task.style`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
import torch
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
from finekit.data.dialogue import apply_house_style, dialogue_to_messages
from finekit.data.splits import Splits, fold_holdout
from finekit.errors import DataError, ModelError, RecipeError
from finekit.evaluate.generation import generation_scores
from finekit.recipe import Recipe, RuleSpec, Section, TaskConfig
from finekit.recipe.auto import Proposals, length_rule, schedule_rule, setting
from finekit.tasks.lm.causal import (
    IGNORE,
    CausalLMConfig,
    CausalLMTask,
    GeneralPerplexity,
    lm_eval_step,
    lm_loss,
    lm_metrics,
    pad_token_id,
)

log = logging.getLogger(__name__)
METRICS = ("loss", "perplexity")  # on assistant tokens (lower is better)
ROLES = ("system", "user", "assistant")
# ChatML (used by SmolLM2, Qwen...): the default when a tokenizer has no template and the
# recipe says `task.default_template: chatml`.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


class DialogueSpec(Section):
    """Dialogue JSON -> messages: `turns` is the column holding the list of turns, each
    turn a mapping with a `speaker` and a `text` field; `roles` maps speaker values to
    chat roles (user/assistant/system). Defaults fit Taskmaster (`utterances`)."""

    turns: str = "utterances"
    speaker: str = "speaker"
    text: str = "text"
    roles: dict[str, str] = Field(
        default_factory=lambda: {"user": "user", "assistant": "assistant"}
    )


class StyleSpec(Section):
    """Training-data transforms that teach a house style by example."""

    # Prepended to the first assistant reply of every conversation (unless already there).
    prefix_first_reply: str | None = None


class ChatConfig(TaskConfig):
    """Options of `chat`."""

    name: str = "chat"
    messages_column: str = "messages"
    prompt_column: str = "prompt"
    response_column: str = "response"
    id_column: str = "conversation_id"  # names conversations in errors (else "row N")
    dialogue: DialogueSpec = Field(default_factory=DialogueSpec)
    system_prompt: str | None = None  # prepended as a system turn where there is none
    # The template when the tokenizer has none; "none": that is an error (ModelError).
    default_template: Literal["none", "chatml"] = "none"
    # A conversation with an empty assistant reply or no reply: fail, or skip and count it.
    on_bad_conversation: Literal["error", "skip"] = "error"
    # Pack short training conversations into rows of up to training.max_length tokens
    # (fewer, fuller rows: less padding). Each keeps its own positions (position_ids restart)
    # and attends only to itself: transformers builds the block-diagonal causal mask from the
    # restarts (checked on the real model before training). Evaluation is never packed.
    packing: bool = False
    max_new_tokens: int = Field(64, ge=1, le=4096)  # greedy reply length (eval, predict)
    generation_samples: int = Field(32, ge=0)  # held-out conversations answered per split
    # Which reply of a held-out conversation is generated and scored: the last (the whole
    # history as context) or the first (the opening, e.g. a greeting house style).
    generation_turn: Literal["last", "first"] = "last"
    style: StyleSpec = Field(default_factory=StyleSpec)

    generates: ClassVar[bool] = True
    default_metric: ClassVar[str] = "loss"  # on assistant tokens

    def auto_defaults(self, p: Proposals) -> None:
        src = "recipes/support-bot.yaml (measured in benchmarks/README.md)"
        p.propose("training.batch_size", 8, "conversations of hundreds of tokens: batch 8", src)
        p.propose(
            "training.lr",
            2e-5,
            "full supervised fine-tuning of a chat LM",
            "TRL SFTConfig's default learning rate",
        )  # LoRA and the other adapters raise it (method auto_lr): 2e-4, as the recipe
        p.propose("training.head_lr", None, "no new head: the LM head is pre-trained", src)
        p.propose("training.warmup_ratio", 0.05, "short warm-up (5% of steps)", src)
        # Every conversation whole (a cut one loses its last replies, which are what is
        # learned and scored) and room for a generated reply, within 1024 tokens.
        length_rule(p, 1.0, 1024, f"{src} (512: no conversation cut)", room=self.max_new_tokens)
        # ~2 passes (support-bot: 120 steps over ~450 dialogs at batch 8); evaluation
        # generates replies, so at most ~4 per run; the loss keeps falling: no early stop.
        schedule_rule(p, floor_steps=100, min_epochs=2, source=src, evaluations=4, small=0)

    def check(self, recipe: Recipe) -> None:
        # Packed conversations are kept apart by their position_ids.
        if self.packing and not recipe.method.keeps_position_ids:
            raise ValueError(
                f"task.packing: {recipe.method.name} drops the position_ids that keep packed "
                "conversations apart (prompt tuning prepends virtual tokens to each row); set "
                "task.packing: false"
            )


class ChatTask:
    """Assistant-only next-token loss on rendered conversations (causal-lm head)."""

    name = "chat"
    general_key = "general_perplexity"  # the retention measure's name (as for causal_lm)
    metric_names: tuple[str, ...] = METRICS

    def __init__(self, config: ChatConfig) -> None:
        self.config = config
        self.max_length = 512
        self.seed = 42
        self.model_name = "the model"
        self.rules: RuleSpec | None = None
        self.chat_template: str | None = None  # the template used in training (for load_run)
        self.heldout: dict[str, pd.DataFrame] = {}  # split -> conversations (generation eval)
        self.skipped: dict[str, dict[str, int]] = {}
        self.truncation: dict[str, dict[str, int]] = {}
        self.counts: dict[str, dict[str, Any]] = {}
        self._shown = False
        self._samples: list[dict[str, Any]] = []  # last generation_metrics replies

    @property
    def system_prompt(self) -> str | None:
        return self.config.system_prompt

    def encoding_record(self) -> dict[str, Any]:
        return self.truncation

    def forget_split(self, split: str) -> None:
        self.truncation.pop(split, None)
        self.counts.pop(split, None)

    # ------------------------------------------------------------------ data
    def prepare(self, splits: Splits, recipe: Recipe) -> Prepared:
        d = recipe.data
        self.max_length = setting(recipe, "training.max_length")
        self.seed = recipe.training.seed
        self.model_name = recipe.model.path
        self.rules = recipe.evaluation.rules
        if recipe.evaluation.metric not in self.metric_names:
            raise RecipeError(
                f"evaluation.metric={recipe.evaluation.metric!r} is not a chat metric; "
                f"allowed: {', '.join(self.metric_names)}"
            )
        convs = {s: self.conversations(df, splits.sources.get(s, s), s) for s, df in splits.items()}
        train, val, test = convs["train"], convs.get("validation"), convs.get("test")
        src = splits.sources["train"]
        sources = dict(splits.sources)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))
        train = train.iloc[order.tolist()].reset_index(drop=True)  # seeded, whole conversations
        for what, frac, missing in (
            ("test", d.test_fraction, test is None),
            ("validation", d.validation_fraction, val is None and d.folds is None),
        ):
            if not missing or frac <= 0:
                continue
            n = max(1, round(len(train) * frac))
            if n >= len(train):
                raise DataError(
                    f"{src}: {len(train)} conversations are too few to hold out {frac:.0%} as "
                    f"{what}; give data.{what} or set data.{what}_fraction=0"
                )
            held, train = train.iloc[:n].reset_index(drop=True), train.iloc[n:]
            train = train.reset_index(drop=True)
            sources[what] = f"{frac:.0%} of the conversations of {src} (seeded)"
            if what == "test":
                test = held
            else:
                val = held
        if d.folds is not None:
            train, val = fold_holdout(train, d.folds, self.seed, None, src, "conversations")
            sources["validation"] = (
                f"fold {d.folds.index + 1} of {d.folds.k} of the conversations of {src}"
            )
        if d.max_train_samples and len(train) > d.max_train_samples:
            train = train.iloc[: d.max_train_samples].reset_index(drop=True)
        out = Splits(train=train, validation=val, test=test, sources=sources)
        self.heldout = {s: df for s, df in out.items() if s != "train"}
        info: dict[str, Any] = {
            "conversations": {s: int(len(df)) for s, df in out.items()},
            "sources": sources,
            "skipped_conversations": self.skipped,
            "tokens": self.counts,  # filled by `encode`
            "system_prompt": self.config.system_prompt,
            "style": self.config.style.model_dump(),
        }
        return Prepared(splits=out, info=info)

    def conversations(self, df: pd.DataFrame, source: str, split: str = "input") -> pd.DataFrame:
        """Rows -> a `messages` column (plus `conversation`, a name for errors), checked:
        unknown roles fail; empty/missing replies fail or are skipped and counted
        (`task.on_bad_conversation`); the system prompt and style are applied."""
        c = self.config
        id_col = next((x for x in (c.id_column, "conversation") if x in df.columns), None)
        names = df[id_col].astype(str).tolist() if id_col else [f"row {i}" for i in range(len(df))]
        if c.messages_column in df.columns:
            raw = [
                _as_messages(m, f"{source}: conversation {n}")
                for m, n in zip(df[c.messages_column], names, strict=True)
            ]
        elif c.dialogue.turns in df.columns:
            dl = c.dialogue
            raw = [
                dialogue_to_messages(
                    t, f"{source}: conversation {n}", dl.speaker, dl.text, dl.roles
                )
                for t, n in zip(df[dl.turns], names, strict=True)
            ]
        elif c.prompt_column in df.columns and c.response_column in df.columns:
            raw = [
                [{"role": "user", "content": str(p)}, {"role": "assistant", "content": str(r)}]
                for p, r in zip(df[c.prompt_column], df[c.response_column], strict=True)
            ]
        else:
            raise DataError(
                f"{source}: no conversations: expected a {c.messages_column!r} column, a "
                f"{c.dialogue.turns!r} column (task.dialogue.turns) or {c.prompt_column!r} + "
                f"{c.response_column!r} columns; columns are {[str(x) for x in df.columns]}"
            )
        keep_msgs, keep_names = [], []
        skipped = {"empty_reply": 0, "no_reply": 0}
        for msgs, name in zip(raw, names, strict=True):
            where = f"{source}: conversation {name}"
            for m in msgs:
                if m["role"] not in ROLES:
                    raise DataError(
                        f"{where}: unknown role {m['role']!r}; allowed: {', '.join(ROLES)} "
                        "(map speakers with task.dialogue.roles)"
                    )
            problem = None
            if not any(m["role"] == "assistant" for m in msgs):
                problem = "no_reply"
            elif any(m["role"] == "assistant" and not m["content"].strip() for m in msgs):
                problem = "empty_reply"
            if problem is not None:
                if c.on_bad_conversation == "error":
                    what = (
                        "has no assistant turn"
                        if problem == "no_reply"
                        else "has an empty assistant turn"
                    )
                    raise DataError(
                        f"{where} {what} (nothing to learn); fix the data or set "
                        "task.on_bad_conversation: skip"
                    )
                skipped[problem] += 1
                continue
            keep_msgs.append(self._styled(msgs))
            keep_names.append(name)
        if any(skipped.values()):
            self.skipped[split] = skipped
            log.warning("%s: skipped %s bad conversations", source, skipped)
        if not keep_msgs:
            raise DataError(f"{source}: no usable conversation (all {len(raw)} were skipped)")
        return pd.DataFrame({"messages": keep_msgs, "conversation": keep_names})

    def _styled(self, msgs: list[dict[str, str]]) -> list[dict[str, str]]:
        """The system prompt (if none) and the style transforms."""
        msgs = [dict(m) for m in msgs]
        sp = self.config.system_prompt
        if sp and (not msgs or msgs[0]["role"] != "system"):
            msgs.insert(0, {"role": "system", "content": sp})
        prefix = self.config.style.prefix_first_reply
        return apply_house_style(msgs, prefix) if prefix else msgs

    size_unit = "training conversations"

    def train_size(self, info: dict[str, Any]) -> int | None:
        n = info.get("conversations", {}).get("train")
        return None if n is None else int(n)

    def head(self) -> HeadSpec:
        return HeadSpec(kind="causal-lm")

    # ------------------------------------------------------------------ features
    def ensure_template(self, processor: Any) -> None:
        """The tokenizer's chat template; ChatML if it has none and the recipe allows it."""
        if getattr(processor, "chat_template", None):
            self.chat_template = processor.chat_template
            return
        if self.chat_template:  # a run trained with a default template
            processor.chat_template = self.chat_template
        elif self.config.default_template == "chatml":
            processor.chat_template = CHATML
            self.chat_template = CHATML
            log.info(
                "%s has no chat template: using ChatML (task.default_template)", self.model_name
            )
        else:
            raise ModelError(
                f"model {self.model_name} has no chat template; set task.default_template: "
                "chatml (or use a model/tokenizer that has one)"
            )

    def render(
        self, processor: Any, messages: list[dict[str, str]], where: str
    ) -> tuple[list[int], list[int]]:
        """Token ids and labels of one conversation: labels are the ids on assistant
        replies (content + end-of-turn) and the final EOS, -100 elsewhere."""
        msgs = _trim_to_last_reply(messages)
        full = _template(processor, msgs, False)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prefix = _template(processor, msgs[:i], True)
            upto = _template(processor, msgs[: i + 1], False)
            if not (full.startswith(upto) and upto.startswith(prefix)):
                raise ModelError(
                    f"{where}: the chat template of {self.model_name} does not render "
                    "conversations prefix by prefix, so assistant tokens cannot be located"
                )
            spans.append((len(prefix), len(upto.rstrip())))
        enc = processor(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [IGNORE] * len(ids)
        for j, (a, b) in enumerate(enc["offset_mapping"]):
            if b > a and any(a < e and b > s for s, e in spans):
                labels[j] = ids[j]
        eos = getattr(processor, "eos_token_id", None)
        last = max((j for j, lab in enumerate(labels) if lab != IGNORE), default=None)
        if eos is not None and last is not None and ids[last] != eos:
            # Template whitespace after the last reply is dropped; EOS follows the reply's
            # end-of-turn and is learned, so the model stops. (Where EOS *is* the end-of-turn
            # token, e.g. SmolLM2's <|im_end|>, it is already supervised.)
            ids, labels = ids[: last + 1] + [eos], labels[: last + 1] + [eos]
        return ids, labels

    def input_lengths(self, df: pd.DataFrame, processor: Any) -> list[int]:
        """Tokens of each rendered conversation (chat template included)."""
        self.ensure_template(processor)
        return [
            len(self.render(processor, msgs, f"conversation {name}")[0])
            for msgs, name in zip(df["messages"], df["conversation"], strict=True)
        ]

    def encode(self, df: pd.DataFrame, processor: Any, split: str) -> EncodedDataset:
        """Render, mask and truncate (counted) each conversation; log one example."""
        self.ensure_template(processor)
        if getattr(processor, "is_fast", True) is False:
            raise ModelError(f"chat needs a fast tokenizer (offsets); {self.model_name} has none")
        feats: list[dict[str, Any]] = []
        truncated = dropped = tokens = supervised = 0
        for msgs, name in zip(df["messages"], df["conversation"], strict=True):
            where = f"{split}: conversation {name}"
            ids, labels = self.render(processor, msgs, where)
            if not any(x != IGNORE for x in labels):
                raise DataError(f"{where}: no supervised (assistant) token after rendering")
            if len(ids) > self.max_length:
                truncated += 1
                ids, labels = ids[: self.max_length], labels[: self.max_length]
                if not any(x != IGNORE for x in labels):
                    dropped += 1  # truncation removed every reply: nothing to learn
                    continue
            if not self._shown and split == "train":
                self._shown = True
                log.info(
                    "example (supervised text in [[...]]):\n%s", show_mask(processor, ids, labels)
                )
            tokens += len(ids)
            supervised += sum(x != IGNORE for x in labels)
            feats.append({"input_ids": ids, "labels": labels})
        self.truncation[split] = {
            "max_length": self.max_length,
            "truncated": truncated,
            "skipped_all_replies_truncated": dropped,
        }
        if truncated:
            log.warning(
                "%s: %d conversations longer than training.max_length=%d were truncated (%d "
                "lost every reply and are skipped)",
                split,
                truncated,
                self.max_length,
                dropped,
            )
        if not feats:
            raise DataError(
                f"{split}: every conversation lost its replies to truncation; raise "
                "training.max_length"
            )
        self.counts[split] = {
            "conversations": len(feats),
            "tokens": tokens,
            "supervised": supervised,
        }
        if split == "train" and self.config.packing:
            feats = pack_conversations(feats, self.max_length)
            self.counts[split]["packed_rows"] = len(feats)
            self.counts[split]["packed_fill"] = round(tokens / (len(feats) * self.max_length), 4)
        return EncodedDataset(feats, [len(f["input_ids"]) for f in feats])

    def collator(self, processor: Any) -> Callable[[list[dict[str, Any]]], Batch]:
        return ChatCollator(pad_token_id(processor))

    # ------------------------------------------------------------------ steps
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return lm_loss(model, batch)

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return lm_eval_step(model, batch)

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Token-weighted NLL (nats) on assistant tokens and its exponential."""
        return lm_metrics(outputs)

    def artifacts(
        self,
        outputs: dict[str, torch.Tensor],
        out_dir: Path,
        split: str,
        rows: pd.DataFrame | None = None,
    ) -> list[str]:
        """The generated replies behind the split's generation scores (one JSON a line)."""
        if not self._samples:
            return []
        name = f"{split}_replies.jsonl"
        with (out_dir / name).open("w", encoding="utf-8") as f:
            for row in self._samples:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._samples = []
        return [name]

    # ------------------------------------------------------------------ generation
    def generation_metrics(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame
    ) -> dict[str, Any]:
        """Greedy replies to the first `task.generation_samples` conversations (the history
        before the last — or, with `task.generation_turn: first`, the first — reply as the
        prompt), scored against that reply and the rules."""
        n = self.config.generation_samples
        if n == 0 or rows is None or len(rows) == 0:
            return {}
        prompts, refs = [], []
        pick = max if self.config.generation_turn == "last" else min
        for msgs in rows["messages"].tolist()[:n]:
            turn = pick(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            prompts.append(msgs[:turn])
            refs.append(msgs[turn]["content"])
        replies, stopped = self.generate(model, processor, prompts, 8)
        # Kept for `artifacts` (eval/<split>_replies.jsonl): what the numbers are made of.
        self._samples = [
            {"prompt": p[-1]["content"] if p else "", "reference": r, "reply": y, "stopped": s}
            for p, r, y, s in zip(prompts, refs, replies, stopped, strict=True)
        ]
        return generation_scores(replies, refs, stopped, self.rules)

    def baseline(
        self, model: nn.Module, processor: Any, encoded: dict[str, EncodedDataset], batch_size: int
    ) -> dict[str, dict[str, Any]]:
        """The base model's assistant-token loss/perplexity and generation scores per
        held-out split, merged into run.json as `<metric>_before` beside `_after`."""
        from finekit.evaluate.runner import run_outputs

        if self.config.packing:
            check_packing(model)
        out: dict[str, dict[str, Any]] = {}
        skip = {"tokens", "examples", "generation_samples"}
        for split, data in encoded.items():
            if split == "train" or len(data) == 0:
                continue
            m = self.metrics(run_outputs(self, model, data, self.collator(processor), batch_size))
            if split in self.heldout:
                m.update(self.generation_metrics(model, processor, self.heldout[split]))
            out[split] = {f"{k}_before": v for k, v in m.items() if k not in skip}
        return out

    # ------------------------------------------------------------------ general English
    def _general(self) -> CausalLMTask:
        """A `causal_lm` view of plain general text: what a chat-tuned LM should not forget
        is the language itself, measured as causal_lm measures it."""
        return CausalLMTask(CausalLMConfig(block_size=min(256, self.max_length)))

    def retention(self, model: nn.Module, processor: Any, recipe: Recipe) -> GeneralPerplexity:
        """Forgetting: perplexity of general English (finekit's reference or the user's
        file) before, during and after training — as for `causal_lm`."""
        return GeneralPerplexity(
            self._general(),
            model,
            processor,
            recipe.evaluation.retention_reference,
            recipe.training.eval_batch_size,
        )

    def fisher_data(self, processor: Any, recipe: Recipe) -> EncodedDataset:
        """EWC's reference set (`training.ewc`): general English, every token a target."""
        blocks = self._general().reference_data(processor, recipe.evaluation.retention_reference)
        feats = [{**f, "labels": list(f["input_ids"])} for f in blocks.features]
        return EncodedDataset(feats, blocks.lengths)

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        processor: Any,
        conversations: list[list[dict[str, str]]],
        batch_size: int,
        streamer: Any = None,
    ) -> tuple[list[str], list[bool]]:
        """Greedy replies (left-padded batches; prompts cut from the left to fit
        training.max_length - max_new_tokens) and whether each stopped by itself.
        `streamer` (e.g. transformers' TextStreamer) receives tokens as they come."""
        self.ensure_template(processor)
        device = next(model.parameters()).device
        stops = stop_ids(processor)
        pad = processor.pad_token_id if processor.pad_token_id is not None else stops[0]
        room = max(1, self.max_length - self.config.max_new_tokens)
        was_training = model.training
        model.eval()
        replies: list[str] = []
        stopped: list[bool] = []
        try:
            for i in range(0, len(conversations), batch_size):
                chunk = conversations[i : i + batch_size]
                seqs = [
                    processor(_template(processor, c, True), add_special_tokens=False)["input_ids"][
                        -room:
                    ]
                    for c in chunk
                ]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), pad, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for j, s in enumerate(seqs):
                    ids[j, width - len(s) :] = torch.as_tensor(s)
                    mask[j, width - len(s) :] = 1
                out = model.generate(  # type: ignore[operator]
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=self.config.max_new_tokens,
                    do_sample=False,
                    eos_token_id=stops,
                    pad_token_id=pad,
                    streamer=streamer,
                )
                for row in out[:, width:].tolist():
                    cut = next((k for k, t in enumerate(row) if t in stops), None)
                    stopped.append(cut is not None)
                    text = processor.decode(row[:cut], skip_special_tokens=True)
                    replies.append(text.strip())
        finally:
            model.train(was_training)
        return replies, stopped

    # ------------------------------------------------------------------ inference
    def read_inputs(self, df: pd.DataFrame, source: str, with_labels: bool = False) -> pd.DataFrame:
        """Evaluation: whole conversations (checked). Prediction: a `messages` history,
        or a `prompt` (or `text`) column as one user turn."""
        if with_labels:
            return self.conversations(df, source)
        c = self.config
        if c.messages_column in df.columns:
            msgs = [
                _as_messages(m, f"{source}: row {i}") for i, m in enumerate(df[c.messages_column])
            ]
        else:
            col = next((x for x in (c.prompt_column, "text") if x in df.columns), None)
            if col is None:
                raise DataError(
                    f"{source}: expected a {c.messages_column!r} or {c.prompt_column!r} column; "
                    f"columns are {[str(x) for x in df.columns]}"
                )
            msgs = [[{"role": "user", "content": str(p)}] for p in df[col]]
        sp = c.system_prompt
        msgs = [
            [{"role": "system", "content": sp}, *m]
            if sp and (not m or m[0]["role"] != "system")
            else m
            for m in msgs
        ]
        return pd.DataFrame({"messages": msgs})

    def predict(
        self, model: nn.Module, processor: Any, rows: pd.DataFrame, batch_size: int
    ) -> list[dict[str, Any]]:
        """The assistant's greedy reply to each conversation history: {"text": reply}."""
        replies, _ = self.generate(model, processor, rows["messages"].tolist(), batch_size)
        return [{"text": r} for r in replies]

    def report_sections(
        self, run_dir: Path, recipe: Recipe, run: dict[str, Any]
    ) -> list[ReportSection]:
        """Reply loss and generation scores (rules included) before and after, per split."""
        rows = []
        for split, m in (run.get("metrics") or {}).items():
            for key in sorted(k[: -len("_before")] for k in m if k.endswith("_before")):
                b, a = m[f"{key}_before"], m.get(f"{key}_after", m.get(key))
                if isinstance(b, (int, float)) and isinstance(a, (int, float)):
                    rows.append([split, key, f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}"])
        if not rows:
            return []
        note = (
            "loss/perplexity: on assistant tokens (lower is better). exact_match, token_f1, "
            "rougeL, stopped_by_eos, rule_*: greedy replies to "
            f"{self.config.generation_samples} held-out conversations per split, against "
            "their last real reply (higher is better)."
        )
        return [
            ReportSection(
                "Replies before and after",
                [
                    Table(["split", "metric", "before", "after", "change"], rows),
                    Text(note, "muted"),
                ],
            )
        ]

    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "max_length": self.max_length,
            "rules": self.rules.model_dump() if self.rules else None,
            "chat_template": self.chat_template,
            "model_name": self.model_name,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if "config" in state:
            self.config = ChatConfig.model_validate(state["config"])
        self.max_length = int(state.get("max_length", self.max_length))
        self.rules = RuleSpec.model_validate(state["rules"]) if state.get("rules") else None
        self.chat_template = state.get("chat_template")
        self.model_name = state.get("model_name", self.model_name)


class ChatCollator:
    """Right-pads ids and labels (padding: attention 0, label -100). Packed rows also get
    `position_ids` restarting at each conversation (the padding is one more "sequence"
    starting at 0, after every real token, so nothing real attends to it)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> Batch:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        packed = any("position_ids" in f for f in features)
        pos = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            labels[i, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            if packed:
                pos[i, :n] = torch.as_tensor(f.get("position_ids", range(n)), dtype=torch.long)
                pos[i, n:] = torch.arange(width - n)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if packed:
            batch["position_ids"] = pos
        return batch


def pack_conversations(feats: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Greedy packing in order: conversations join the current row while it has room.
    Each row holds `position_ids` restarting at 0 per conversation; the first token of each
    conversation is never a target (the shifted loss would predict it from the previous
    conversation's last token)."""
    rows: list[dict[str, Any]] = []
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for f in feats:
        n = len(f["input_ids"])
        if cur["input_ids"] and len(cur["input_ids"]) + n > max_length:
            rows.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += list(f["input_ids"])
        cur["labels"] += [IGNORE, *list(f["labels"])[1:]]
        cur["position_ids"] += list(range(n))
    if cur["input_ids"]:
        rows.append(cur)
    return rows


@torch.no_grad()
def check_packing(model: nn.Module) -> None:
    """Refuse packing on a model whose attention does not keep packed conversations apart
    (two short random sequences, packed vs alone, must give the same logits)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 100) or 100)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, vocab, (1, 6), generator=g)
    b = torch.randint(0, vocab, (1, 5), generator=g)
    pos = torch.tensor([[*range(6), *range(5)]])
    try:
        packed = model(
            input_ids=torch.cat([a, b], 1).to(device), position_ids=pos.to(device), use_cache=False
        ).logits.float()
        alone = model(input_ids=b.to(device), use_cache=False).logits.float()
    finally:
        model.train(was_training)
    if not torch.allclose(packed[0, 6:], alone[0], atol=1e-3, rtol=1e-3):
        raise ModelError(
            "task.packing: this model's attention lets a packed conversation see the previous "
            f"one ({type(model).__name__}); set task.packing: false"
        )


def _as_messages(value: Any, where: str) -> list[dict[str, str]]:
    """A `messages` cell (list of {role, content}) checked and copied."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}}")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {k} is not a {{role, content}} mapping")
        out.append(
            {"role": str(m["role"]), "content": "" if m["content"] is None else str(m["content"])}
        )
    return out


def _trim_to_last_reply(msgs: list[dict[str, str]]) -> list[dict[str, str]]:
    """Drop turns after the last assistant reply (nothing to learn from them)."""
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs) - 1)
    return msgs[: last + 1]


def _template(processor: Any, msgs: list[dict[str, str]], generation_prompt: bool) -> str:
    if not msgs:
        if not generation_prompt:
            return ""
        try:
            return str(
                processor.apply_chat_template([], tokenize=False, add_generation_prompt=True)
            )
        except Exception:  # some templates fail on an empty conversation
            return ""
    return str(
        processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
    )


def stop_ids(processor: Any) -> list[int]:
    """EOS and the template's end-of-turn token(s) where they are single tokens."""
    out = []
    if getattr(processor, "eos_token_id", None) is not None:
        out.append(int(processor.eos_token_id))
    unk = getattr(processor, "unk_token_id", None)
    vocab = processor.get_vocab()
    for tok in END_OF_TURN:
        i = vocab.get(tok)
        if i is not None and i != unk and i not in out:
            out.append(int(i))
    if not out:
        raise ModelError("chat: the tokenizer has neither an EOS nor an end-of-turn token")
    return out


def show_mask(processor: Any, ids: list[int], labels: list[int]) -> str:
    """The rendered conversation with supervised runs in [[...]] (for the pre-flight log)."""
    parts: list[str] = []
    run: list[int] = []
    sup = False
    for t, lab in [*zip(ids, labels, strict=True), (None, None)]:
        now = lab is not None and lab != IGNORE
        if t is None or now != sup:
            if run:
                text = processor.decode(run, skip_special_tokens=False)
                parts.append(f"[[{text}]]" if sup else text)
            run, sup = [], now
        if t is not None:
            run.append(t)
    return " ".join(parts)
