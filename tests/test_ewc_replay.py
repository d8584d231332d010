"""Forgetting/overfitting controls: EWC (training.ewc), replay (data.replay) and dropout
overrides (model.dropout)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CrashAtStep, build_tiny_llama, make_rows

from finekit import Recipe, finetune
from finekit.errors import DataError, RecipeError
from finekit.models import family_for
from finekit.recipe import ModelSpec
from finekit.run.stages import ewc as build_ewc
from finekit.run.stages import setup as _setup
from finekit.tasks import EncodedDataset, HeadSpec
from finekit.train.callbacks import CallbackError
from finekit.train.loop import EpochSampler
from finekit.train.regularisers import diagonal_fisher
from finekit.train.replay import ReplayMix


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ewc_of(r: Recipe):  # noqa: ANN202
    """The EWC regulariser exactly as finetune builds it, and the base model."""
    s = _setup(r)
    train = s.task.encode(s.prepared.splits.train, s.loaded.processor, "train")
    assert r.training.ewc is not None
    return build_ewc(r, r.training.ewc, s, train), s


# --------------------------------------------------------------------------- EWC
def test_ewc_and_l2sp_together_are_refused(tiny_recipe: Recipe) -> None:
    with pytest.raises(RecipeError, match=r"training\.l2sp and training\.ewc .* pick one"):
        tiny_recipe.with_overrides(["training.ewc=1.0", "training.l2sp=0.1"])
    # Each alone is fine, from --set strings as from the CLI.
    assert tiny_recipe.with_overrides(["training.ewc=1.0"]).training.ewc == 1.0


def test_diagonal_fisher_is_mean_squared_gradient_in_eval_mode(
    tiny_model_dir: Path, tiny_recipe: Recipe
) -> None:
    s = _setup(tiny_recipe)
    model, task = s.model, s.task
    model.train()  # dropout on: the Fisher must still be computed without it
    data = task.encode(s.prepared.splits.train, s.loaded.processor, "train")
    collate = task.collator(s.loaded.processor)
    batches = [collate([data[j] for j in range(i, i + 8)]) for i in (0, 8, 16)]
    params = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    fisher, n = diagonal_fisher(model, task.loss, params, batches)
    assert n == 3
    # By hand, on a copy in eval mode: mean over batches of the squared gradients.
    ref = copy.deepcopy(model).eval()
    ref_params = [p for n, p in ref.named_parameters() if not n.startswith("classifier")]
    expected = [torch.zeros_like(p) for p in ref_params]
    for b in batches:
        ref.zero_grad()
        task.loss(ref, b).backward()
        for e, p in zip(expected, ref_params, strict=True):
            e += p.grad.pow(2) / 3
    for f, e in zip(fisher, expected, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-4, atol=1e-12)
    assert all(bool((f >= 0).all()) and bool(f.isfinite().all()) for f in fisher)
    assert sum(float(f.sum()) for f in fisher) > 0
    # The model is left as it was: training mode, weights, no grads, global RNG untouched.
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert torch.equal(rng, torch.get_rng_state())


def test_ewc_fisher_is_normalised_from_the_base_weights(tiny_recipe: Recipe) -> None:
    r = tiny_recipe.with_overrides({"training.ewc": 1.0, "training.ewc_batches": 3})
    ewc, s = _ewc_of(r)
    assert ewc.info["fisher_batches"] == 3 and ewc.info["fisher_source"] == "train"
    # Non-negative, finite, mean 1 over the regularised (body) weights; the head is excluded.
    flat = torch.cat([f.flatten() for f in ewc.fisher])
    assert bool((flat >= 0).all()) and bool(flat.isfinite().all())
    assert float(flat.mean()) == pytest.approx(1.0, rel=1e-5)
    assert float(flat.max()) > 10 * float(flat.median())  # not uniform: some weights matter
    body = [p for n, p in s.model.named_parameters() if not n.startswith("classifier")]
    assert len(ewc.pairs) == len(body)
    for (p, p0), q in zip(ewc.pairs, body, strict=True):
        assert p is q and torch.equal(p0, q.detach())
    # Computed from the weights it is given: a perturbed model gives another Fisher, and a
    # fresh setup (what a resumed run does) the base model's again.
    train = s.task.encode(s.prepared.splits.train, s.loaded.processor, "train")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in body:
            p.add_(0.2 * torch.randn_like(p))
    perturbed = build_ewc(r, 1.0, s, train)
    mean = ewc.info["fisher_mean_before_normalising"]
    assert perturbed.info["fisher_mean_before_normalising"] != pytest.approx(mean, rel=0.01)
    again, _ = _ewc_of(r)
    assert again.info["fisher_mean_before_normalising"] == pytest.approx(mean, rel=1e-6)
    for f, g in zip(ewc.fisher, again.fisher, strict=True):
        torch.testing.assert_close(f, g)


def test_ewc_keeps_high_fisher_weights_closer_to_the_base(
    tiny_recipe: Recipe, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    r = tiny_recipe.with_overrides({"training.epochs": 4, "evaluation.retention": "off"})
    ewc, s = _ewc_of(r.with_overrides({"training.ewc": 1.0}))
    names = [n for n, _ in s.model.named_parameters() if not n.startswith("classifier")]
    base = {n: p0.cpu() for n, (_, p0) in zip(names, ewc.pairs, strict=True)}
    fisher = {n: f.cpu() for n, f in zip(names, ewc.fisher, strict=True)}
    plain = finetune(r.with_overrides({"output.dir": str(tmp_path / "plain")}))
    pulled = finetune(r.with_overrides({"output.dir": str(tmp_path / "ewc"), "training.ewc": 10.0}))
    info = pulled.summary["regularisers"]["ewc"]
    assert info["alpha"] == 10.0 and info["fisher_batches"] >= 1
    rows = [x for x in _rows(pulled.run_dir / "metrics.jsonl") if x["split"] == "train"]
    assert all("penalty" in x for x in rows)

    def moves(run_dir: Path) -> tuple[float, float]:
        """Mean |w - w0| on the top 1% Fisher weights and on the rest."""
        w = load_file(str(run_dir / "model" / "model.safetensors"))
        delta = torch.cat([(w[n] - base[n]).abs().flatten() for n in names])
        f = torch.cat([fisher[n].flatten() for n in names])
        top = f >= f.quantile(0.99)
        return float(delta[top].mean()), float(delta[~top].mean())

    plain_top, plain_rest = moves(plain.run_dir)
    ewc_top, ewc_rest = moves(pulled.run_dir)
    assert ewc_top < 0.1 * plain_top  # measured: ~100x less at alpha 10
    # The pull is selective: high-Fisher weights are held more than the others (a uniform
    # Fisher, i.e. L2-SP, fails this: measured 0.015 on the top vs 0.0008 on the rest).
    assert ewc_top / plain_top < ewc_rest / plain_rest


# --------------------------------------------------------------------------- replay
@pytest.fixture()
def replay_csv(tmp_path: Path) -> Path:
    p = tmp_path / "replay.csv"
    pd.DataFrame(make_rows(10, seed=3)).to_csv(p, index=False)  # 30 rows, same labels
    return p


def test_sampler_mixes_the_replay_share_each_epoch() -> None:
    n, pool, ratio = 90, 50, 0.25
    mix = ReplayMix(
        EncodedDataset([{"i": i} for i in range(n)], [5 + i % 7 for i in range(n)]),
        EncodedDataset([{"i": n + j} for j in range(pool)], [3 + j % 4 for j in range(pool)]),
        ratio,
    )
    assert mix.per_epoch == 30 and mix.replay == (90, 30)
    assert mix[0] == {"i": 0} and mix[n + 4] == {"i": n + 4}
    for group in (False, True):
        s = EpochSampler(mix.lengths, 8, seed=7, group_by_length=group, replay=mix.replay)
        assert len(s) == 120
        drawn = []
        for epoch in range(3):
            s.set_epoch(epoch)
            order = list(s)
            assert len(order) == 120
            assert sorted(i for i in order if i < n) == list(range(n))  # all task data once
            replay = [i for i in order if i >= n]
            assert len(replay) / len(order) == pytest.approx(ratio, abs=0.01)
            assert len(set(replay)) == len(replay)  # no repeats while the pool lasts
            assert order == list(s)  # (seed, epoch) alone fixes the order: exact resume
            drawn.append(set(replay))
        assert drawn[0] != drawn[1]  # a fresh draw of the pool per epoch
    # A pool smaller than the draw is cycled through.
    small = EpochSampler([1] * 13, 4, seed=1, group_by_length=False, replay=(10, 7))
    picks = [i for i in small if i >= 10]
    assert len(picks) == 7 and set(picks) == {10, 11, 12}


def test_replay_run_mixes_counts_and_resumes_exactly(
    tiny_recipe: Recipe, replay_csv: Path, tmp_path: Path
) -> None:
    r = tiny_recipe.with_overrides(
        {
            "data.replay": {"path": str(replay_csv), "ratio": 0.2},
            "training.ewc": 1.0,  # its Fisher must come from the base weights on resume too
            "training.ewc_batches": 2,
            "training.checkpoint_every": 5,
            "training.epochs": 2,
        }
    )
    full = finetune(r.with_overrides({"output.dir": str(tmp_path / "full")}))
    info = full.summary["data"]["replay"]
    n_train = full.summary["data"]["rows"]["train"]
    assert info["pool_examples"] == 30
    assert info["per_epoch"] == round(0.2 / 0.8 * n_train)
    assert info["share_per_epoch"] == pytest.approx(0.2, abs=0.01)
    assert info["examples_seen"] == 2 * info["per_epoch"]
    assert full.train["samples_seen"] == 2 * (n_train + info["per_epoch"])
    broken = r.with_overrides({"output.dir": str(tmp_path / "broken")})
    with pytest.raises(CallbackError):
        finetune(broken, callbacks=[CrashAtStep(8)])
    resumed = finetune(broken, resume=True)
    assert resumed.train["resumed_from"].endswith("step-00000005")
    assert resumed.metrics["test"] == full.metrics["test"]
    assert resumed.summary["data"]["replay"] == info
    from safetensors.torch import load_file

    wa = load_file(str(full.model_dir / "model.safetensors"))
    wb = load_file(str(resumed.model_dir / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_replay_errors_name_the_file_before_anything_is_written(
    tiny_recipe: Recipe, tmp_path: Path
) -> None:
    out = Path(tiny_recipe.output.dir or "")

    def run(path: Path, match: str) -> None:
        r = tiny_recipe.with_overrides({"data.replay": {"path": str(path), "ratio": 0.3}})
        with pytest.raises(DataError, match=match):
            finetune(r)
        assert not out.exists()

    missing = tmp_path / "nope.csv"
    run(missing, rf"data\.replay\.path: {missing} does not exist")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    run(empty, rf"data\.replay: .*{empty}.* no rows")
    alien = tmp_path / "alien.csv"
    pd.DataFrame({"text": ["open today", "lost card"], "label": ["hours", "weather"]}).to_csv(
        alien, index=False
    )
    run(alien, rf"{alien}: label\(s\) \['weather'\]")
    with pytest.raises(RecipeError, match="ratio"):
        tiny_recipe.with_overrides({"data.replay": {"path": str(alien), "ratio": 1.0}})


# --------------------------------------------------------------------------- dropout
def test_dropout_overrides_set_config_and_modules(tiny_model_dir: Path) -> None:
    head = HeadSpec("sequence-classification", 3)
    rates = {"hidden": 0.3, "attention": 0.2, "classifier": 0.45}
    for pretrained in (True, False):
        spec = ModelSpec(path=str(tiny_model_dir), dropout=rates)
        model = family_for(spec).load(spec, head, pretrained=pretrained).model
        cfg = model.config
        assert cfg.hidden_dropout_prob == 0.3
        assert cfg.attention_probs_dropout_prob == 0.2
        assert cfg.classifier_dropout == 0.45
        assert model.bert.embeddings.dropout.p == 0.3
        assert model.bert.encoder.layer[0].output.dropout.p == 0.3
        assert model.bert.encoder.layer[0].attention.self.dropout.p == 0.2
        assert model.dropout.p == 0.45
    # None keeps the checkpoint's rates.
    spec = ModelSpec(path=str(tiny_model_dir))
    plain = family_for(spec).load(spec, head).model
    assert plain.config.hidden_dropout_prob == 0.1 and plain.dropout.p == 0.1


def test_dropout_override_without_a_field_is_an_error(tmp_path: Path) -> None:
    from test_efficientnet_lite import processor, tiny_model

    from finekit.models.base import FAMILIES

    fam = FAMILIES.get("efficientnet_lite")
    d = tmp_path / "lite"
    fam.save(tiny_model(), processor(), d, HeadSpec("image-classification", 5))
    head = HeadSpec("image-classification", 2, {0: "a", 1: "b"})
    spec = ModelSpec(path=str(d), dropout={"classifier": 0.5})
    model = fam.load(spec, head).model
    assert model.config.dropout == 0.5 and model._dropout.p == 0.5
    bad = ModelSpec(path=str(d), dropout={"hidden": 0.3})
    with pytest.raises(RecipeError, match=r"model\.dropout\.hidden=0\.3: .*'efficientnet_lite'"):
        fam.load(bad, head)


def test_dropout_error_stops_a_run_before_anything_is_written(
    tiny_recipe: Recipe, tmp_path: Path, tiny_model_dir: Path
) -> None:
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    # GPT-2 has hidden (resid_pdrop, embd_pdrop) but no classifier dropout field.
    lm = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(lm)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special")):
            shutil.copy(f, lm / f.name)
    # The fields as `finekit train --set` gives them.
    r = tiny_recipe.with_overrides(
        ["model.dropout.classifier=0.3", "model.dropout.hidden=0.2", f"model.path={lm}"]
    )
    assert r.model.dropout.classifier == 0.3
    with pytest.raises(RecipeError, match=r"model\.dropout\.classifier=0\.3: model type 'gpt2'"):
        finetune(r)
    assert not Path(r.output.dir or "").exists()
    spec = ModelSpec(path=str(lm), dropout={"hidden": 0.25})
    model = family_for(spec).load(spec, HeadSpec("causal-lm")).model
    assert model.config.resid_pdrop == model.config.embd_pdrop == 0.25
    assert model.transformer.drop.p == 0.25


# --------------------------------------------------------------------------- causal LM
def test_causal_lm_ewc_on_general_english_replay_and_dropout(tmp_path: Path) -> None:
    """The same three controls on another task: EWC's Fisher from the task's own reference
    (general English), replay of a plain-text corpus, Llama's attention dropout."""
    from test_causal_lm import _recipe, domain_text

    from finekit.data.readers import read_text_corpus
    from finekit.evaluate.retention import reference_sentences

    llama = _llama(tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(domain_text(200, seed=1), encoding="utf-8")
    general = tmp_path / "general.txt"
    general.write_text("\n".join(reference_sentences(None)[0][:60]), encoding="utf-8")
    r = _recipe(
        llama,
        corpus,
        tmp_path / "run",
        model={"path": str(llama), "dropout": {"attention": 0.15}},
        data={"replay": {"path": str(general), "ratio": 0.25}},
        training={"max_steps": 6, "ewc": 1.0, "ewc_batches": 2},
    )
    result = finetune(r)
    ewc = result.summary["regularisers"]["ewc"]
    assert ewc["fisher_source"] == "causal_lm.fisher_data" and ewc["fisher_batches"] == 2
    replay = result.summary["data"]["replay"]
    assert replay["pool_examples"] == result.summary["data"]["tokens"]["replay"]["blocks"] > 0
    assert replay["share_per_epoch"] == pytest.approx(0.25, abs=0.03)
    cfg = json.loads((result.model_dir / "config.json").read_text())
    assert cfg["attention_dropout"] == 0.15
    assert len(read_text_corpus(str(general))) == 1
    with pytest.raises(RecipeError, match=r"model\.dropout\.hidden=0\.1: model type 'llama'"):
        finetune(
            {
                **r,
                "model": {"path": str(llama), "dropout": {"hidden": 0.1}},
                "output": {"dir": str(tmp_path / "never")},
            }
        )
    assert not (tmp_path / "never").exists()


def _llama(tmp_path: Path) -> Path:
    """test_causal_lm's tiny Llama (its fixture is module-scoped there)."""
    from test_causal_lm import _vocab

    d = tmp_path / "tiny-llama"
    d.mkdir()
    return build_tiny_llama(d, _vocab())
