"""Text augmentation (EDA, Wei & Zou 2019): each op does what it says, draws are a pure
function of (seed, epoch, example), only training batches are augmented, an augmented run
resumed mid-epoch ends where the uninterrupted one does, and unsupported augmentation is a
RecipeError naming the field."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CrashAtStep

from finekit import Recipe, finetune
from finekit.data.augment.text import (
    SYNONYMS_FILE,
    EdaSettings,
    eda,
    example_rng,
    load_synonyms,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
)
from finekit.errors import RecipeError
from finekit.train.callbacks import CallbackError

SENTENCE = "Please help me : my new card is broken and the refund is late again".split()  # noqa: SIM905
SYN = load_synonyms()


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- the list
def test_synonym_list_ships_as_package_data_and_is_symmetric() -> None:
    assert SYNONYMS_FILE.is_file() and (SYNONYMS_FILE.parent / "SYNONYMS.md").is_file()
    assert "CC0" in (SYNONYMS_FILE.parent / "SYNONYMS.md").read_text()
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"data/augment/*.txt"' in pyproject and '"data/augment/*.md"' in pyproject
    assert len(SYN) >= 300  # a few hundred common words
    assert "large" in SYN["big"] and "big" in SYN["large"]  # groups: synonyms both ways
    assert all(w == w.lower() and " " not in w for w in SYN)
    assert all(w not in syns for w, syns in SYN.items())  # a word is not its own synonym


# ----------------------------------------------------------------------------- the ops
def test_deletion_removes_words_but_never_all() -> None:
    for seed in range(50):
        out = random_deletion(SENTENCE, 0.3, _rng(seed))
        assert 1 <= len(out) <= len(SENTENCE)
        assert Counter(out) <= Counter(SENTENCE)  # only removes, never adds or changes
    shorter = [len(random_deletion(SENTENCE, 0.3, _rng(s))) for s in range(50)]
    assert min(shorter) < len(SENTENCE)
    # p = 1 would delete everything: one word stays.
    for seed in range(20):
        out = random_deletion(SENTENCE, 1.0, _rng(seed))
        assert len(out) == 1 and out[0] in SENTENCE
    assert random_deletion(["alone"], 1.0, _rng()) == ["alone"]


def test_swap_keeps_the_words_and_changes_the_order() -> None:
    n = max(1, int(0.2 * len(SENTENCE)))  # EDA's alpha * l swaps
    for seed in range(30):
        out = random_swap(SENTENCE, 0.2, _rng(seed))
        assert Counter(out) == Counter(SENTENCE)
        assert sum(a != b for a, b in zip(out, SENTENCE, strict=True)) <= 2 * n
    distinct = ["alpha", "beta", "gamma", "delta", "epsilon"]
    for seed in range(30):  # one swap of two different positions always shows
        out = random_swap(distinct, 0.1, _rng(seed))
        assert sorted(out) == sorted(distinct)
        assert sum(a != b for a, b in zip(out, distinct, strict=True)) == 2
    assert random_swap(["one"], 0.5, _rng()) == ["one"]


def test_insertion_adds_synonyms_of_words_in_the_sentence() -> None:
    keys = {w.strip(":").lower() for w in SENTENCE}
    allowed = {s for w in keys if w in SYN for s in SYN[w]}
    for seed in range(30):
        out = random_insertion(SENTENCE, 0.2, _rng(seed))
        added = Counter(out) - Counter(SENTENCE)
        assert sum(added.values()) == len(out) - len(SENTENCE) == int(0.2 * len(SENTENCE))
        assert set(added) <= allowed
    # No word with a synonym: nothing to insert.
    assert random_insertion(["zzz", "qqq"], 0.5, _rng()) == ["zzz", "qqq"]


def test_replacement_uses_the_list_and_keeps_case_and_punctuation() -> None:
    words = ["Big", "house,", "big", "dog."]
    for seed in range(20):
        out = synonym_replacement(words, 0.25, _rng(seed))  # n = 1 distinct word
        assert len(out) == len(words)
        changed = [(a, b) for a, b in zip(words, out, strict=True) if a != b]
        assert changed, "a word with synonyms must be replaced"
        for before, after in changed:
            assert after.strip(",.").lower() in SYN[before.strip(",.").lower()]
            assert after[0].isupper() == before[0].isupper()
            if before[-1] in ",.":
                assert after[-1] == before[-1]
        # Every occurrence of the chosen word takes the same synonym (as in EDA).
        assert out[0].lower() == out[2].lower()
    assert synonym_replacement(["zzz"], 1.0, _rng()) == ["zzz"]


def test_eda_is_a_function_of_seed_epoch_and_example() -> None:
    text = " ".join(SENTENCE)
    s = EdaSettings(synonym=0.2, insert=0.2, swap=0.2, delete=0.2, prob=1.0)
    same = [eda(text, s, example_rng(7, 0, i)) for i in range(20)]
    assert same == [eda(text, s, example_rng(7, 0, i)) for i in range(20)]
    # prob 1: always augmented (EDA's deletion may drop no word, a swap may meet two "is")
    assert sum(t != text for t in same) >= 17
    assert same != [eda(text, s, example_rng(8, 0, i)) for i in range(20)]  # other seed
    assert same != [eda(text, s, example_rng(7, 1, i)) for i in range(20)]  # other epoch
    assert len(set(same)) > 10  # examples differ from one another
    # Python's global `random` plays no part.
    import random

    random.seed(123)
    assert same == [eda(text, s, example_rng(7, 0, i)) for i in range(20)]
    half = EdaSettings(swap=0.2, prob=0.5)
    kept = sum(eda(text, half, example_rng(0, 0, i)) == text for i in range(400))
    assert 150 < kept < 250  # text_prob is the share augmented
    assert eda(text, EdaSettings(prob=1.0), example_rng(0, 0, 0)) == text  # no op on


# ----------------------------------------------------------------------------- recipe
def _recipe(augment: dict, task: str = "classify", **data) -> Recipe:
    return Recipe.from_dict(
        {"model": "m", "task": task, "data": {"train": "t.csv", "augment": augment, **data}}
    )


def test_light_preset_means_eda_for_text_and_kornia_for_images() -> None:
    text = _recipe({"preset": "light"})
    assert EdaSettings.from_spec(text.data.augment) == EdaSettings(0.1, 0.1, 0.1, 0.1, 0.5)
    override = _recipe({"preset": "light", "eda_swap": 0.0, "text_prob": 1.0})
    assert EdaSettings.from_spec(override.data.augment) == EdaSettings(0.1, 0.1, 0.0, 0.1, 1.0)
    assert not _recipe({"eda_swap": 0.1, "text_prob": 0.0}).data.augment.active("text")
    image = _recipe({"preset": "light"}, image_column="path")
    assert image.task.modality == "image"  # type: ignore[attr-defined]
    from finekit.data.augment import resolve_augment

    assert resolve_augment(image.data.augment)["hflip"] == 0.5


@pytest.mark.parametrize(
    ("augment", "task", "data", "message"),
    [
        ({"hflip": 0.5}, "classify", {}, r"data\.augment\.hflip is for image data.*'classify'"),
        ({"preset": "medical"}, "classify", {}, r"data\.augment\.preset='medical'.*text"),
        (
            {"eda_swap": 0.1},
            "classify",
            {"image_column": "path"},
            r"data\.augment\.eda_swap is for text data.*'classify' on image",
        ),
        ({"eda_insert": 0.1}, "causal_lm", {}, r"data\.augment\.eda_insert: task 'causal_lm'"),
        ({"preset": "light"}, "chat", {}, r"data\.augment\.preset='light': task 'chat'"),
        ({"mixup": 0.2}, "chat", {}, r"data\.augment\.mixup: task 'chat'"),
    ],
)
def test_unsupported_augmentation_is_an_error_naming_the_field(augment, task, data, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(augment, task, **data)


# ----------------------------------------------------------------------------- training
def _augmented(r: Recipe, prob: float = 1.0) -> Recipe:
    return r.with_overrides({"data.augment": {"preset": "light", "text_prob": prob}})


def test_only_training_examples_are_augmented(tiny_recipe: Recipe, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from finekit.data.splits import read_splits
    from finekit.run.stages import subset as _subset
    from finekit.tasks import build_task
    from finekit.tasks.classify.text import AugmentedTexts

    r = _augmented(tiny_recipe)
    task = build_task(r.task)
    prepared = task.prepare(read_splits(r.data), r)
    assert prepared.info["augment"]["text_prob"] == 1.0
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = {s: task.encode(df, tok, s) for s, df in prepared.splits.items()}
    train = enc["train"]
    assert isinstance(train, AugmentedTexts)
    assert not any(isinstance(enc[s], AugmentedTexts) for s in ("validation", "test"))
    assert not isinstance(task.encode(prepared.splits.test, tok, "predict"), AugmentedTexts)
    # Training items are new tokens each epoch; the plain features stay as encoded.
    texts = prepared.splits.train["text"].tolist()
    first = [train[i]["input_ids"] for i in range(len(train))]
    new = sum(a != f["input_ids"] for a, f in zip(first, train.features, strict=True))
    assert new > 0.6 * len(train)  # prob 1, but EDA's deletion may drop no word of 5
    assert [train[i]["input_ids"] for i in range(len(train))] == first  # same epoch: same
    assert all(train[i]["labels"] == train.features[i]["labels"] for i in range(len(train)))
    train.set_epoch(1)
    assert [train[i]["input_ids"] for i in range(len(train))] != first
    assert train.text(0) != texts[0] or train.text(1) != texts[1]
    # The train/validation gap subset reads the plain encodings.
    sub = _subset(train, 16, r.training.seed)
    assert sub is not None and not isinstance(sub, AugmentedTexts)
    plain_ids = [f["input_ids"] for f in train.features]
    assert all(sub[i]["input_ids"] in plain_ids for i in range(len(sub)))
    # Without augmentation the fast path is the plain dataset.
    plain_task = build_task(tiny_recipe.task)
    p2 = plain_task.prepare(read_splits(tiny_recipe.data), tiny_recipe)
    assert not isinstance(plain_task.encode(p2.splits.train, tok, "train"), AugmentedTexts)


def test_a_training_run_augments_every_training_fetch_and_never_evaluation(
    tiny_recipe: Recipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    import finekit.tasks.classify.text as classify

    calls: list[tuple[str, str]] = []
    real = classify.eda

    def spy(text, settings, rng, synonyms=None):  # noqa: ANN001, ANN202
        out = real(text, settings, rng, synonyms)
        calls.append((text, out))
        return out

    monkeypatch.setattr(classify, "eda", spy)
    epochs: list[int] = []
    set_epoch = classify.AugmentedTexts.set_epoch

    def record(self, epoch: int) -> None:  # noqa: ANN001
        epochs.append(epoch)
        set_epoch(self, epoch)

    monkeypatch.setattr(classify.AugmentedTexts, "set_epoch", record)
    r = _augmented(tiny_recipe).with_overrides({"training.epochs": 2})
    result = finetune(r)
    n_train = result.summary["data"]["rows"]["train"]
    # One draw per training example per epoch: validation (each epoch), train_eval and the
    # final test evaluation of the exported model never go through augmentation.
    assert len(calls) == 2 * n_train
    # The loop (and accelerate's loader) tell the training set each epoch: new draws.
    assert sorted(set(epochs)) == [0, 1] and epochs == sorted(epochs)
    assert sum(a != b for a, b in calls) > 0.6 * len(calls)
    assert result.summary["data"]["augment"]["preset"] == "light"


def test_augmented_run_resumed_mid_epoch_matches_uninterrupted(
    tiny_recipe: Recipe, tmp_path: Path
) -> None:
    base = tiny_recipe.with_overrides({"training.checkpoint_every": 5, "training.epochs": 2})
    r = _augmented(base, prob=0.7)
    full = finetune(r.with_overrides({"output.dir": str(tmp_path / "full")}))
    plain = finetune(base.with_overrides({"output.dir": str(tmp_path / "plain")}))
    broken = r.with_overrides({"output.dir": str(tmp_path / "broken")})
    with pytest.raises(CallbackError):
        finetune(broken, callbacks=[CrashAtStep(8)])
    resumed = finetune(broken, resume=True)
    assert resumed.train["resumed_from"].endswith("step-00000005")
    from safetensors.torch import load_file

    wa = load_file(str(full.model_dir / "model.safetensors"))
    wb = load_file(str(resumed.model_dir / "model.safetensors"))
    wp = load_file(str(plain.model_dir / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    # Augmentation changed training (else the equality above would prove nothing).
    assert any(not torch.allclose(wa[k], wp[k]) for k in wa)
    assert resumed.metrics["test"] == full.metrics["test"]

    def train_losses(run_dir: Path) -> list[float]:
        # From step 7 on: the resumed run's first logging window (step 6) is one step short.
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [x["loss"] for x in rows if x["split"] == "train" and x["step"] > 6]

    assert train_losses(resumed.run_dir) == pytest.approx(train_losses(full.run_dir), rel=1e-5)
