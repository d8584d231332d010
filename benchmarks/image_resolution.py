"""Input resolution vs AUC and compute for 28 px chest X-rays (issue 6).

    python benchmarks/image_resolution.py [--sizes 28,64,112] [--out FILE.json]

PneumoniaMNIST images are 28x28; EfficientNet-Lite0 was pre-trained at 224. Upscaling
costs compute roughly with the square of the side. Each size runs recipes/chest-xray.yaml
unchanged except `task.image_size` (all training images, same epochs and rates), and the
exported model's inference throughput is timed. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from finekit import Recipe, finetune

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist-balanced" / "pneumoniamnist.npz"


def inference_throughput(run_dir: Path, size: int, batch: int = 64, reps: int = 5) -> float:
    """Images per second of the exported model (fp32, channels_last, batch 64)."""
    from finekit.serve.predict import load_run

    run = load_run(run_dir)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        run.model(pixel_values=x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            run.model(pixel_values=x)
    return batch * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="28,64,112")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "image_resolution.json"))
    ap.add_argument("--runs", default="runs/image-resolution")
    args = ap.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"PneumoniaMNIST absent at {DATA}")
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        out = Path(args.runs) / f"px{size}"
        r = Recipe.from_yaml(
            ROOT / "recipes" / "chest-xray.yaml",
            overrides=[
                f"data.train={DATA}",
                f"task.image_size={size}",
                f"output.dir={out}",
                "output.overwrite=true",
            ],
        )
        run = finetune(r).summary
        test = run["metrics"]["test"]
        rows.append(
            {
                "image_size": size,
                "test_auc": test["roc_auc"],
                "test_accuracy": test["accuracy"],
                "sensitivity": test["sensitivity"],
                "specificity": test["specificity"],
                "ece": test["ece"],
                "train_seconds": run["train"]["seconds"],
                "train_samples_per_second": run["train"]["samples_per_second"],
                "inference_images_per_second": round(inference_throughput(out, size), 1),
                "steps": run["train"]["steps"],
            }
        )
        print(rows[-1], flush=True)
    print(
        f"\n{'px':>5}{'test AUC':>10}{'acc':>8}{'sens':>7}{'spec':>7}{'ECE':>7}"
        f"{'train s':>9}{'train img/s':>13}{'infer img/s':>13}"
    )
    for x in rows:
        print(
            f"{x['image_size']:>5}{x['test_auc']:>10.4f}{x['test_accuracy']:>8.3f}"
            f"{x['sensitivity']:>7.3f}{x['specificity']:>7.3f}{x['ece']:>7.3f}"
            f"{x['train_seconds']:>9.0f}{x['train_samples_per_second']:>13.0f}"
            f"{x['inference_images_per_second']:>13.0f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"recipe": "recipes/chest-xray.yaml", "rows": rows}, indent=1)
    )
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
