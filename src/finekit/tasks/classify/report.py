"""Report data of the `classify` task (text): data summary with a leakage check, per-class
metrics, and the worst-confused pairs with example texts. `report/` renders it."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from finekit.core.contracts import Block, Figure, Heading, ReportSection, Table, Text  # noqa: E402
from finekit.evaluate.plots import png_bytes  # noqa: E402

log = logging.getLogger(__name__)
NEAR_DUPLICATE_COSINE = 0.9  # char 3-5-gram TF-IDF cosine: same text up to a few edits
PAIR_JOIN = " ‖ "  # shows a sentence pair as one example


def _normalise(text: str) -> str:
    return re.sub(r"[^\w]+", " ", str(text).lower()).strip()


def leakage(train: list[str], other: list[str]) -> dict[str, Any]:
    """Exact (after lower-casing and stripping punctuation) and near duplicates of `other`
    texts in `train` — evaluation examples the model may have seen in training."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    norm_train = {_normalise(t) for t in train}
    exact = [t for t in other if _normalise(t) in norm_train]
    near: list[tuple[str, str, float]] = []
    if train and other:
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=1)
        a = vec.fit_transform([_normalise(t) for t in train])
        b = vec.transform([_normalise(t) for t in other])
        # Rows are L2-normalised: the dot product is the cosine. Chunked to bound memory.
        for start in range(0, b.shape[0], 512):
            sims = (b[start : start + 512] @ a.T).toarray()
            best = sims.argmax(1)
            for i, j in enumerate(best):
                s = float(sims[i, j])
                text = other[start + i]
                if s >= NEAR_DUPLICATE_COSINE and _normalise(text) not in norm_train:
                    near.append((text, train[j], s))
    return {"exact": exact, "near": near}


def _examples(df: pd.DataFrame, col: str, pair: str | None) -> list[str]:
    """Examples as a person reads them: the text, and for sentence pairs "text ‖ pair"."""
    texts = df[col].astype(str)
    if pair:
        texts = texts + PAIR_JOIN + df[pair].astype(str)
    return texts.tolist()


def sections(task: Any, run_dir: Path, recipe: Any, run: dict[str, Any]) -> list[ReportSection]:
    out = [ReportSection("Data", _data_section(task, run_dir, recipe, run))]
    metrics = run.get("metrics", {})
    split = "test" if "test" in metrics else ("validation" if "validation" in metrics else None)
    if split and "per_class" in metrics[split]:
        pc = metrics[split]["per_class"]
        rows = sorted(pc.items(), key=lambda kv: (kv[1]["f1"], kv[0]))
        out.append(
            ReportSection(
                f"Per-class metrics ({split})",
                [
                    Text("Sorted by F1, weakest first.", "muted"),
                    Table(
                        ["class", "precision", "recall", "F1", "support"],
                        [[k, v["precision"], v["recall"], v["f1"], v["support"]] for k, v in rows],
                    ),
                ],
            )
        )
    if split:
        out.append(ReportSection("Confusions", _confusions(run_dir, split)))
    return out


def _data_section(task: Any, run_dir: Path, recipe: Any, run: dict[str, Any]) -> list[Block]:
    data = run.get("data", {})
    parts: list[Block] = []
    rows = data.get("rows", {})
    sources = data.get("sources", {})
    parts.append(
        Table(["split", "rows", "source"], [[s, n, sources.get(s, "")] for s, n in rows.items()])
    )
    counts = data.get("train_class_counts", {})
    if counts:
        fig, ax = plt.subplots(figsize=(min(11, 2 + 0.14 * len(counts)), 3))
        names = list(counts)
        ax.bar(range(len(names)), [counts[n] for n in names], color="#3182bd")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=6 if len(names) > 30 else 8)
        ax.set_ylabel("training examples")
        ax.set_title(
            f"Class balance (training set): min {min(counts.values())}, max {max(counts.values())}"
        )
        parts.append(Figure("Training examples per class.", png=png_bytes(fig)))
    trunc = data.get("truncation", {})
    if trunc:
        parts.append(
            Table(
                [
                    "split",
                    "texts over max_length",
                    "share of texts",
                    "tokens lost",
                    "share of tokens lost",
                ],
                [
                    [
                        s,
                        t["examples"],
                        t["share_of_examples"],
                        t["tokens_lost"],
                        t["share_of_tokens_lost"],
                    ]
                    for s, t in trunc.items()
                ],
                caption=f"Truncation at max_length = "
                f"{next(iter(trunc.values())).get('max_length', '?')} tokens",
            )
        )
    try:
        from finekit.data.splits import read_splits

        prepared = task.prepare(read_splits(recipe.data), recipe)
    except Exception as e:
        parts.append(
            Text(
                f"Data files not readable from here ({e}): no length histogram or leakage check.",
                "warn",
            )
        )
        return parts
    splits = dict(prepared.splits.items())
    col, pair = recipe.data.text_column, recipe.data.text_pair_column
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(run_dir / "model")
        lengths = {  # measured as the model reads an example: with its pair
            s: [
                len(x)
                for x in tok(
                    df[col].astype(str).tolist(),
                    df[pair].astype(str).tolist() if pair else None,
                    verbose=False,  # over-length texts are the point here, not a warning
                )["input_ids"]
            ]
            for s, df in splits.items()
        }
        fig, ax = plt.subplots(figsize=(8, 3))
        hi = max(max(v) for v in lengths.values() if v)
        bins = np.linspace(0, hi + 1, 40).tolist()
        for s, v in lengths.items():
            ax.hist(v, bins=bins, alpha=0.5, label=f"{s} (median {int(np.median(v))})")
        ax.axvline(recipe.training.max_length, color="red", ls="--", label="max_length")
        ax.set_xlabel("tokens per example")
        ax.set_ylabel("examples")
        ax.legend(fontsize=8)
        parts.append(Figure("Length in tokens (the model's tokenizer).", png=png_bytes(fig)))
    except Exception as e:
        log.warning("report: no length histogram: %s", e)
    # An example is its text and, for sentence pairs, its pair: a premise that recurs with
    # another hypothesis is not a leak.
    train_texts = _examples(splits["train"], col, pair)
    leak_rows, examples = [], []
    for s, df in splits.items():
        if s == "train":
            continue
        texts = _examples(df, col, pair)
        lk = leakage(train_texts, texts)
        leak_rows.append([s, len(texts), len(lk["exact"]), len(lk["near"])])
        examples += [(s, t, "exact", "") for t in lk["exact"][:5]]
        examples += [(s, t, f"near ({c:.2f})", m) for t, m, c in lk["near"][:5]]
    if leak_rows:
        parts.append(Heading("Leakage check: evaluation texts also in training"))
        parts.append(Table(["split", "texts", "exact duplicates", "near duplicates"], leak_rows))
        if any(r[2] or r[3] for r in leak_rows):
            parts.append(
                Text(
                    "Some evaluation texts (almost) occur in the training data: their scores "
                    "overstate generalisation.",
                    "warn",
                )
            )
            parts.append(
                Table(
                    ["split", "evaluation text", "kind", "closest training text"],
                    [list(x) for x in examples],
                    left=4,
                )
            )
        else:
            parts.append(Text("No evaluation text occurs in the training data.", "ok"))
    return parts


def _confusions(run_dir: Path, split: str) -> list[Block]:
    parts: list[Block] = []
    png = f"eval/confusion_matrix_{split}.png"
    if (run_dir / png).is_file():
        parts.append(Figure(f"Confusion matrix ({split}), rows normalised.", path=png))
    pred_file = run_dir / "eval" / f"predictions_{split}.csv"
    if not pred_file.is_file():
        return parts
    df = pd.read_csv(pred_file, keep_default_na=False, dtype={"label": str, "predicted": str})
    wrong = df[df["label"] != df["predicted"]]
    if wrong.empty:
        parts.append(Text("No errors on this split.", "ok"))
        return parts
    pairs = wrong.groupby(["label", "predicted"]).size().sort_values(ascending=False).head(10)
    rows = []
    for (true, pred), n in pairs.items():
        ex = wrong[(wrong["label"] == true) & (wrong["predicted"] == pred)]
        ex = _examples(
            ex.sort_values("confidence", ascending=False).head(2),
            "text",
            "text_pair" if "text_pair" in ex.columns else None,
        )
        rows.append([true, pred, int(n), ex])  # the examples: one per line
    parts.append(Heading("Worst-confused pairs"))
    parts.append(
        Table(
            ["true class", "predicted as", "errors", "examples (most confident first)"],
            rows,
            left=2,
            text_columns=(3,),
        )
    )
    parts.append(
        Text(
            f"{len(wrong)} errors of {len(df)} examples; all predictions in "
            f"eval/predictions_{split}.csv.",
            "muted",
        )
    )
    return parts
