"""End-to-end on the tiny model: the loop learns, the run directory is complete, exported
models reload with transformers alone, and a resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CrashAtStep

from finekit import Recipe, finetune, load_run
from finekit.errors import RunDirError
from finekit.train.callbacks import CallbackError


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_finetune_learns_and_writes_a_complete_run(tiny_recipe: Recipe) -> None:
    result = finetune(tiny_recipe)
    run = result.run_dir
    for name in (
        "recipe.yaml",
        "metrics.jsonl",
        "run.json",
        "task.json",
        "train.log",
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "eval/test.json",
        "eval/confusion_matrix_test.png",
    ):
        assert (run / name).exists(), name
    rows = _rows(run / "metrics.jsonl")
    train_losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]  # the loss goes down
    assert [r["epoch"] for r in rows if r["split"] == "validation"] == [
        1.0,
        2.0,
        3.0,
        4.0,
        5.0,
        6.0,
    ]
    summary = json.loads((run / "run.json").read_text())
    assert summary["status"] == "completed"
    test = summary["metrics"]["test"]
    assert test["accuracy"] > 0.8  # chance is 1/3
    assert set(test["per_class"]) == {"card", "hours", "refund"}
    assert summary["train"]["trainable_parameters"] > 0
    assert summary["train"]["samples_per_second"] > 0
    assert summary["data"]["rows"]["train"] + summary["data"]["rows"]["validation"] == 120
    assert result.metrics["test"]["accuracy"] == test["accuracy"]
    # Checkpoints: only complete ones, named by step, with the resume files.
    cps = sorted((run / "checkpoints").iterdir())
    assert [c.name for c in cps] == ["step-00000084"]
    assert {f.name for f in cps[0].iterdir()} >= {
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "progress.json",
    }


def test_exported_model_loads_with_transformers_alone(tiny_recipe: Recipe, toy_data) -> None:
    result = finetune(tiny_recipe)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(result.model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    test = pd.read_csv(toy_data["test"])
    with torch.no_grad():
        enc = tok(test["text"].tolist(), padding=True, return_tensors="pt")
        ids = model(**enc).logits.argmax(-1).tolist()
    plain_labels = [model.config.id2label[i] for i in ids]
    ours = [p["label"] for p in load_run(result.run_dir).predict(test["text"].tolist())]
    assert plain_labels == ours
    acc = (pd.Series(ours) == test["label"]).mean()
    assert acc == pytest.approx(result.metrics["test"]["accuracy"], abs=0)


class Crash:
    """Simulates a crash right after the first epoch's checkpoint."""

    def on_checkpoint(self, state, control, path) -> None:
        raise KeyboardInterrupt("simulated crash")


class CrashAfter:
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_checkpoint(self, state, control, path) -> None:
        if state.progress.epoch >= self.epochs:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("checkpoint_every", [None, 5])
def test_resume_matches_uninterrupted(
    tiny_recipe: Recipe, tmp_path: Path, checkpoint_every: int | None
) -> None:
    # Dropout is on in the tiny model: equality needs the RNG restored, not only weights.
    r = tiny_recipe.with_overrides(
        {"training.checkpoint_every": checkpoint_every, "training.epochs": 3}
    )
    full = finetune(r.with_overrides({"output.dir": str(tmp_path / "full")}))
    broken = r.with_overrides({"output.dir": str(tmp_path / "broken")})
    with pytest.raises(CallbackError, match="CrashAfter failed in on_checkpoint"):
        finetune(broken, callbacks=[CrashAfter(1)])
    assert not (tmp_path / "broken" / "model").exists()
    resumed = finetune(broken, resume=True)
    assert resumed.train["resumed_from"].endswith("step-00000014") or checkpoint_every
    assert resumed.metrics["test"] == full.metrics["test"]
    assert resumed.metrics["validation"] == full.metrics["validation"]
    a = _rows(full.run_dir / "metrics.jsonl")
    b = [row for row in _rows(resumed.run_dir / "metrics.jsonl")]
    last_a = [x for x in a if x["split"] == "train"][-1]
    last_b = [x for x in b if x["split"] == "train"][-1]
    assert last_a["loss"] == pytest.approx(last_b["loss"], rel=1e-5)
    from safetensors.torch import load_file

    wa = load_file(str(full.model_dir / "model.safetensors"))
    wb = load_file(str(resumed.model_dir / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_unfinished_temp_checkpoint_is_ignored(tiny_recipe: Recipe) -> None:
    r = tiny_recipe.with_overrides({"training.epochs": 2})
    with pytest.raises(CallbackError):
        finetune(r, callbacks=[CrashAfter(1)])
    ckpts = Path(r.output.dir) / "checkpoints"
    (ckpts / ".tmp-step-00000099-1").mkdir()  # what a crash mid-write leaves
    (ckpts / ".tmp-step-00000099-1" / "model.safetensors").write_bytes(b"half")
    resumed = finetune(r, resume=True)
    assert resumed.train["resumed_from"].endswith("step-00000014")
    assert resumed.train["steps"] == 28


def test_a_damaged_checkpoint_is_named_and_the_older_one_still_resumes(
    tiny_recipe: Recipe, tmp_path: Path
) -> None:
    r = tiny_recipe.with_overrides(
        {
            "training.epochs": 2,
            "training.checkpoint_every": 5,
            "training.keep_checkpoints": 2,
        }
    )
    full = finetune(r.with_overrides({"output.dir": str(tmp_path / "full")}))
    with pytest.raises(CallbackError):
        finetune(r, callbacks=[CrashAtStep(12)])
    ckpts = Path(r.output.dir) / "checkpoints"
    newest = ckpts / "step-00000010"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000005", newest.name]
    weights = newest / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # a disk that lost the end of the file
    with pytest.raises(
        RunDirError,
        match=r"step-00000010: model.safetensors is unreadable .*; if it is damaged, delete "
        r"it and resume again to continue from step-00000005",
    ):
        finetune(r, resume=True)
    weights.write_bytes(good)
    # A file that cannot be read here (permissions, disk) may be fine: no advice to delete.
    import finekit.train.checkpoint as ckpt

    def denied(path: str) -> dict:
        raise PermissionError(13, "Permission denied", path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ckpt, "load_file", denied)
        with pytest.raises(RunDirError, match=r"cannot be read here.*check permissions") as e:
            finetune(r, resume=True)
    assert "delete" not in str(e.value)
    (newest / "optimizer.pt").write_bytes(b"not a pickle")
    with pytest.raises(RunDirError, match=r"optimizer.pt is unreadable"):
        finetune(r, resume=True)
    (newest / "optimizer.pt").unlink()
    with pytest.raises(RunDirError, match=r"incomplete \(missing \['optimizer.pt'\]\)"):
        finetune(r, resume=True)
    # As the message says: without the damaged one, the older checkpoint resumes exactly.
    import shutil

    shutil.rmtree(newest)
    resumed = finetune(r, resume=True)
    assert resumed.train["resumed_from"].endswith("step-00000005")
    assert resumed.metrics["test"] == full.metrics["test"]


def test_lora_end_to_end_exports_adapter_and_merged(tiny_recipe: Recipe) -> None:
    r = tiny_recipe.with_overrides(
        {
            "method": {"name": "lora", "r": 4, "target_modules": ["query", "value"]},
            "training.lr": 1e-2,
        }
    )
    result = finetune(r)
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert result.train["trainable_parameters"] < result.train["total_parameters"] / 3
    assert result.metrics["test"]["accuracy"] > 0.6


def test_truncation_is_counted(tiny_recipe: Recipe) -> None:
    result = finetune(tiny_recipe.with_overrides({"training.max_length": 8, "training.epochs": 1}))
    trunc = result.summary["data"]["truncation"]["train"]
    assert trunc["examples"] > 0 and 0 < trunc["share_of_tokens_lost"] < 1


def test_run_dir_rules(tiny_recipe: Recipe, tmp_path: Path) -> None:
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="exists and is not a finekit run"):
        finetune(tiny_recipe.with_overrides({"output.dir": str(other)}))
    assert (other / "precious.txt").read_text() == "keep me"
    r = tiny_recipe.with_overrides({"training.epochs": 1})
    finetune(r)
    with pytest.raises(RunDirError, match="already holds a finekit run; continue it with --resume"):
        finetune(r)
    with pytest.raises(RunDirError, match=r"differs .* in training\.lr"):
        finetune(r.with_overrides({"training.lr": 1e-4}), resume=True)
    finetune(r.with_overrides({"output.overwrite": True}))


def test_mid_epoch_resume_matches_and_logs_each_step_once(
    tiny_recipe: Recipe, tmp_path: Path
) -> None:
    # Checkpoint at step 5 (mid-epoch), crash at step 8: the resume skips 5 consumed batches
    # of epoch 0 and must still replay the same batches and dropout masks.
    r = tiny_recipe.with_overrides({"training.checkpoint_every": 5, "training.epochs": 2})
    full = finetune(r.with_overrides({"output.dir": str(tmp_path / "full")}))
    broken = r.with_overrides({"output.dir": str(tmp_path / "broken")})
    with pytest.raises(CallbackError):
        finetune(broken, callbacks=[CrashAtStep(8)])
    status = json.loads((tmp_path / "broken" / "run.json").read_text())
    assert status["status"] == "failed" and "simulated crash" in status["error"]
    ckpt = tmp_path / "broken" / "checkpoints" / "step-00000005" / "progress.json"
    spent = json.loads(ckpt.read_text())["wall_seconds"]
    assert spent > 0  # the first attempt's time, to its checkpoint
    resumed = finetune(broken, resume=True)
    assert resumed.train["resumed_from"].endswith("step-00000005")
    assert resumed.metrics["test"] == full.metrics["test"]
    # wall time covers both attempts: the cost table must not forget the interrupted one
    this = resumed.summary["wall_seconds_this_attempt"]
    assert resumed.summary["wall_seconds"] == pytest.approx(spent + this, abs=0.02)
    assert full.summary["wall_seconds"] == full.summary["wall_seconds_this_attempt"]
    steps = [x["step"] for x in _rows(resumed.run_dir / "metrics.jsonl") if x["split"] == "train"]
    assert steps == sorted(set(steps)) == list(range(2, 29, 2))  # no duplicated rows


def test_bad_input_writes_nothing(tiny_recipe: Recipe, tmp_path: Path) -> None:
    from finekit.errors import DataError, RecipeError

    out = tmp_path / "never"
    cases = [
        ({"data.train": str(tmp_path / "missing.csv")}, DataError),
        ({"method": {"name": "freeze", "layers": 9}}, RecipeError),
        ({"training.max_length": 512}, RecipeError),  # the tiny model has 128 positions
        ({"evaluation.metric": "bleu"}, RecipeError),
    ]
    for upd, err in cases:
        with pytest.raises(err):
            finetune(tiny_recipe.with_overrides({**upd, "output.dir": str(out)}))
        assert not out.exists(), upd


def test_string_labels_keep_leading_zeros(tiny_recipe: Recipe, tmp_path: Path) -> None:
    rows = [
        {"text": f"card lost {i}" if i % 2 else f"open hours {i}", "label": "01" if i % 2 else "1"}
        for i in range(40)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "zeros.csv", index=False)
    r = tiny_recipe.with_overrides(
        {"data.train": str(tmp_path / "zeros.csv"), "data.test": None, "training.epochs": 1}
    )
    result = finetune(r)
    assert result.summary["data"]["labels"] == ["01", "1"]


def test_checkpoint_each_epoch_off_keeps_step_and_final_checkpoints(tiny_recipe: Recipe) -> None:
    r = tiny_recipe.with_overrides(
        {
            "training.epochs": 3,
            "training.checkpoint_each_epoch": False,
            "training.checkpoint_every": 20,
            "training.keep_checkpoints": 5,
        }
    )
    seen: list[str] = []

    class Spy:
        def on_checkpoint(self, state, control, path) -> None:
            seen.append(path.name)

    finetune(r, callbacks=[Spy()])
    assert seen == ["step-00000020", "step-00000040", "step-00000042"]


def test_gradient_accumulation_equals_the_larger_batch(tiny_recipe: Recipe, tmp_path: Path) -> None:
    """8 × 2 accumulated micro-batches = one batch of 16: the same optimizer steps, the
    same schedule and (without dropout, on 96 = 6 × 16 rows) the same weights."""
    from safetensors.torch import load_file

    base = tiny_recipe.with_overrides(
        {
            "training.epochs": 2,
            "training.group_by_length": False,  # the same order cut into 8s or 16s
            "data.validation_fraction": 0.2,  # 120 rows -> 96 for training
            "model.dropout": {"hidden": 0.0, "attention": 0.0, "classifier": 0.0},
            "evaluation.train_eval_samples": 0,
        }
    )
    big = finetune(
        base.with_overrides({"training.batch_size": 16, "output.dir": str(tmp_path / "big")})
    )
    acc = finetune(
        base.with_overrides(
            {
                "training.batch_size": 8,
                "training.grad_accum": 2,
                "output.dir": str(tmp_path / "acc"),
            }
        )
    )
    assert big.summary["data"]["rows"]["train"] == 96
    for key in ("steps", "samples_seen"):
        assert acc.train[key] == big.train[key], key
    assert acc.train["steps"] == 12
    a = load_file(str(big.model_dir / "model.safetensors"))
    b = load_file(str(acc.model_dir / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    rows = {
        name: [r for r in _rows(res.run_dir / "metrics.jsonl") if r["split"] == "train"]
        for name, res in (("big", big), ("acc", acc))
    }
    assert [r["lr"] for r in rows["acc"]] == pytest.approx([r["lr"] for r in rows["big"]])
    # The logged loss is the mean over the step's examples, not the sum of micro-batches.
    assert [r["loss"] for r in rows["acc"]] == pytest.approx(
        [r["loss"] for r in rows["big"]], rel=1e-4
    )


def test_sharded_engine_state_goes_through_accelerate_and_resumes_exactly(
    tiny_recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FSDP/DeepSpeed shard the optimizer, so each rank saves and loads its part through
    accelerate's save_state/load_state. The engines need GPUs; here the same path runs on
    one CPU process (accelerate's save_state/load_state work there too) by declaring the
    launch sharded: the checkpoint holds engine/ instead of optimizer.pt, resumes exactly,
    and a checkpoint of the other kind is refused by name."""
    import finekit.train.loop as loop

    r = tiny_recipe.with_overrides({"training.epochs": 2, "training.checkpoint_every": 5})
    full = finetune(r.with_overrides({"output.dir": str(tmp_path / "full")}))  # not sharded
    monkeypatch.setattr(loop, "sharded_engine", lambda acc: True)
    broken = r.with_overrides({"output.dir": str(tmp_path / "broken")})
    with pytest.raises(CallbackError):
        finetune(broken, callbacks=[CrashAtStep(12)])
    ckpt = tmp_path / "broken" / "checkpoints" / "step-00000010"
    assert (ckpt / "engine" / "optimizer.bin").is_file() and not (ckpt / "optimizer.pt").exists()
    assert not list(ckpt.parent.glob(".tmp-*"))  # the engine folder was moved in, not left
    resumed = finetune(broken, resume=True)
    assert resumed.train["resumed_from"].endswith("step-00000010")
    assert resumed.metrics["test"] == full.metrics["test"]
    from safetensors.torch import load_file

    wa = load_file(str(full.model_dir / "model.safetensors"))
    wb = load_file(str(resumed.model_dir / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    # The same checkpoint under a launch that is not sharded: refused, naming both.
    monkeypatch.setattr(loop, "sharded_engine", lambda acc: False)
    with pytest.raises(RunDirError, match="written with a sharded optimizer .* is not sharded"):
        finetune(r.with_overrides({"output.dir": str(tmp_path / "broken")}), resume=True)
