"""Report of a compare directory: the ladder, learning curves, cost, links to every run."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from finekit.report.html import Raw, esc, figure_from_bytes, page, table  # noqa: E402
from finekit.rundir import read_json  # noqa: E402

REPORT = "report.html"
CURVE = "learning_curve.png"


def _tuning(c: dict[str, Any]) -> str:
    """The candidate each seed chose, and what all candidates cost together."""
    t = c.get("tuning")
    if not t:
        return ""
    picked = ", ".join(f"{k} ×{n}" for k, n in Counter(t["chosen"]).items())
    return (
        f"{picked}; all tries {t['train_seconds_all_tries']:.0f} s, "
        f"{t['train_flops_all_tries']:.2e} FLOPs"
    )


def _x(cell: dict[str, Any], data: dict[str, Any]) -> float:
    """x position: what the cell really trained on — mean training examples per class
    (a size above a small class keeps only that class's examples, so 128 per class can be
    fewer than 128; 'full' sits at its own mean), or total examples without classes."""
    n_classes = data.get("num_classes")
    if cell.get("train_examples"):
        return float(cell["train_examples"] / n_classes if n_classes else cell["train_examples"])
    return float(cell["size"]) if cell["size"] != "full" else float("nan")


def _fmt(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("mean") is None:
        return "—"
    missing = f" ({cell['missing']} run(s) without a value)" if cell.get("missing") else ""
    std = f" ± {cell['std']:.4f}" if len(cell.get("values", [])) > 1 else ""
    return f"{cell['mean']:.4f}{std}{missing}"


def _size_ticks(data: dict[str, Any]) -> list[tuple[float, str]]:
    """One tick per requested size, at the mean x its cells really trained on, named by
    the size asked for ('128', 'all'), not by that mean: two sizes can train on nearly
    the same data (128 per class capped by small classes vs all of it)."""
    at: dict[str, list[float]] = {}
    for c in data["cells"]:
        x = _x(c, data)
        if c.get("mean") is not None and x == x:  # not NaN
            at.setdefault(str(c["size"]), []).append(x)
    ticks = [(sum(xs) / len(xs), "all" if size == "full" else size) for size, xs in at.items()]
    return sorted(ticks)


def _unstack_tick_labels(fig: Any, ax: Any) -> None:
    """Move a tick label that would print over its left neighbour's down one row (more
    padding below the axis), so close sizes stay readable; a label keeps the first row
    where it fits."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    rows: list[float] = []  # right edge (pixels) of the last label placed in each row
    for tick in ax.xaxis.get_major_ticks():
        box = tick.label1.get_window_extent(renderer)
        row = next((i for i, right in enumerate(rows) if box.x0 > right + 2), len(rows))
        if row == len(rows):
            rows.append(box.x1)
        rows[row] = box.x1
        if row:
            height_pt = box.height * 72 / fig.dpi
            tick.set_pad(tick.get_pad() + row * (height_pt + 1))


def _learning_curve_fig(data: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for rung in data["rungs"]:
        cells = sorted(
            (c for c in data["cells"] if c["rung"] == rung and c.get("mean") is not None),
            key=lambda c: _x(c, data),
        )
        label = rung if rung != "recipe" else f"recipe ({data['rungs'][rung]['method']})"
        ax.errorbar(
            [_x(c, data) for c in cells],
            [c["mean"] for c in cells],
            yerr=[c["std"] for c in cells],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ticks = _size_ticks(data)
    if ticks:  # ticks where the cells are, in plain names (not 2x10^1)
        ax.set_xticks([x for x, _ in ticks], [name for _, name in ticks])
        ax.minorticks_off()
    values = [c["mean"] for c in data["cells"] if c.get("mean") is not None]
    if data["metric"] != "loss" and all(0 <= v <= 1 for v in values):
        ax.set_ylim(0, 1.02)  # the whole scale: gaps are not visually exaggerated
    unit = data["size_unit"]
    if data.get("num_classes"):
        what = f"{unit} requested (placed at the mean per class trained on; log scale)"
    else:
        what = f"{unit} (log scale)"
    ax.set_xlabel(what)
    ax.set_ylabel(f"{data['split']} {data['metric']}")
    ax.set_title("Learning curves: metric vs training data, one line per rung")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if ticks:
        _unstack_tick_labels(fig, ax)
        fig.tight_layout()
    return fig


def learning_curve_png(data: dict[str, Any]) -> bytes:
    fig = _learning_curve_fig(data)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def compare_report(out: Path) -> Path:
    data = read_json(out / "compare.json")
    if data.get("smallest_class") is not None and "num_classes" not in data:
        try:
            first = data["cells"][0]["runs"][0]
            data["num_classes"] = read_json(out / first / "run.json")["data"]["num_labels"]
        except (KeyError, IndexError, OSError):
            pass
    png = learning_curve_png(data)
    (out / CURVE).write_bytes(png)
    sizes, rungs = data["sizes"], list(data["rungs"])
    cell = {(c["rung"], str(c["size"])): c for c in data["cells"]}
    ladder = table(
        ["rung", *[f"{s}" for s in sizes]],
        [
            [
                r,
                *[_fmt(cell.get((r, str(s)))) for s in sizes],
            ]
            for r in rungs
        ],
        caption=f"{data['split']} {data['metric']}, mean ± std over {len(data['seeds'])} "
        f"seed(s); columns: {data['size_unit']}",
    )
    cost = table(
        [
            "rung",
            "size",
            "train examples",
            "train s",
            "wall s",
            "trainable params",
            "train FLOPs (est.)",
            "tuned on validation",
            "runs",
        ],
        [
            [
                c["rung"],
                c["size"],
                round(c["train_examples"]),
                f"{c['train_seconds']:.1f}",
                f"{c['wall_seconds']:.1f}",
                c["trainable_parameters"],
                f"{c['train_flops']:.2e}",
                _tuning(c),
                Raw(
                    "<span style='white-space:nowrap'>"
                    + " ".join(
                        f'<a href="{esc(p)}/report.html">s{sd}</a>'
                        for p, sd in zip(c["runs"], c["seeds"], strict=True)
                    )
                    + "</span>"
                ),
            ]
            for c in data["cells"]
        ],
        left=2,
        text_columns=[7],
    )
    notes = table(
        ["rung", "method", "what it is"],
        [[r, v["method"], v["note"]] for r, v in data["rungs"].items()],
        left=3,
    )
    lines = []
    unit_pts = all(0.0 <= c["mean"] <= 1.0 for c in data["cells"] if c.get("mean") is not None)
    for g in data.get("gains", []):
        a, b = cell.get(("recipe", str(g["size"]))), cell.get((g["against"], str(g["size"])))
        if not (a and b) or g.get("mean") is None or a.get("mean") is None or b.get("mean") is None:
            continue
        scale, unit = (100.0, " points") if unit_pts else (1.0, "")
        gap = f"{scale * g['mean']:+.1f}{unit}"
        spread_ = f" ± {scale * g['std']:.1f}" if len(g["values"]) > 1 else ""
        size = "all training data" if g["size"] == "full" else f"{g['size']} {data['size_unit']}"
        lines.append(
            f"<li>{esc(size)}: fine-tuned {a['mean']:.3f} vs "
            f"{esc(g['against'])} {b['mean']:.3f} — "
            f"<b class={'ok' if g['mean'] > 0 else 'bad'}>{esc(gap)}</b>{esc(spread_)} "
            f"(paired by seed; fine-tuned better in {g['recipe_better_in']} of "
            f"{len(g['values'])})</li>"
        )
    verdict = "<ul>" + "".join(lines) + "</ul>" if lines else ""
    sections = [
        ("Ladder", ladder + verdict),
        (
            "Learning curves",
            figure_from_bytes(
                png, "Metric vs training data per rung; error bars = std over seeds."
            ),
        ),
        (
            "Cost",
            cost + "<p class=muted>FLOPs: for token models the 6·N·T rule (Kaplan et al. "
            "2020) split into forward, activation and weight gradients, T = tokens seen; "
            "for images and audio the forward pass counted by PyTorch's FlopCounterMode "
            "on real examples, priced the same way, times the examples seen.</p>",
        ),
        ("Rungs", notes),
    ]
    html_ = page(
        f"finekit compare — {data['recipe']}",
        sections,
        "<p>The same recipe at each rung, on identical splits, seeds and evaluation. "
        "Each run links to its own report.</p>",
    )
    path = out / REPORT
    path.write_text(html_, encoding="utf-8")
    return path
