"""STS-B as regression (task `regress`): fine-tuned MiniLM against its from-scratch twin.

    python benchmarks/stsb.py [--seeds 3] [--against scratch] [--output runs/stsb-compare]

Reads ../shared/data/stsb (tab-separated, no header, first 7 fields: genre, file, year, id,
score, sentence 1, sentence 2; extra trailing fields on some rows are notes), writes the
three splits as parquet under runs/stsb-data (never committed), then runs
`finekit compare recipes/stsb.yaml` on all training pairs and writes
benchmarks/results/stsb.json (test Spearman, Pearson, RMSE per rung, mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pandas as pd

from finekit import Recipe, compare

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT.parent / "shared" / "data" / "stsb"
FILES = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}


def prepare(out: Path) -> None:
    """The raw files as parquet (sentence1, sentence2, score)."""
    out.mkdir(parents=True, exist_ok=True)
    for split, name in FILES.items():
        rows = []
        with (RAW / name).open(encoding="utf-8") as f:
            for fields in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(fields) >= 7:
                    rows.append(
                        {"sentence1": fields[5], "sentence2": fields[6], "score": float(fields[4])}
                    )
        pd.DataFrame(rows).to_parquet(out / f"{split}.parquet", index=False)
        print(f"{split}: {len(rows)} pairs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--against", default="scratch")
    ap.add_argument("--output", default="runs/stsb-compare")
    ap.add_argument("--data", default="runs/stsb-data")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stsb.json"))
    args = ap.parse_args()
    if not RAW.is_dir():
        raise SystemExit(f"STS-B absent at {RAW} (see its SOURCE.md for where it comes from)")
    prepare(Path(args.data))
    recipe = Recipe.from_yaml(
        ROOT / "recipes" / "stsb.yaml",
        overrides=[
            f"data.{s}={args.data}/{n}.parquet"
            for s, n in (("train", "train"), ("validation", "dev"), ("test", "test"))
        ],
    )
    result = compare(recipe, args.against, "full", args.seeds, args.output, min_steps=0)
    table = {}
    for cell in result["cells"]:
        runs = [json.loads((Path(args.output) / d / "run.json").read_text()) for d in cell["runs"]]
        per = {m: [r["metrics"]["test"][m] for r in runs] for m in ("spearman", "pearson", "rmse")}
        table[cell["rung"]] = {
            "test": {m: {"mean": sum(v) / len(v), "values": v} for m, v in per.items()},
            "spearman_std": cell["std"],
            "train_seconds": cell["train_seconds"],
            "epochs": cell["epochs"],
        }
        print(
            f"{cell['rung']:>8}: spearman {cell['mean']:.4f} ± {cell['std']:.4f}  "
            f"pearson {table[cell['rung']]['test']['pearson']['mean']:.4f}  "
            f"rmse {table[cell['rung']]['test']['rmse']['mean']:.3f}  "
            f"({cell['train_seconds']:.0f} s)"
        )
    Path(args.out).write_text(
        json.dumps(
            {
                "command": "python benchmarks/stsb.py " + f"--seeds {args.seeds}",
                "recipe": "recipes/stsb.yaml",
                "seeds": result["seeds"],
                "rungs": table,
                "gains": result["gains"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
