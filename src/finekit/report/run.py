"""The HTML report of one run: what was trained, on what, how it went, how good it is.

Generic sections come from the run directory (recipe, run.json, metrics.jsonl, eval/);
task-specific ones (class balance, leakage, confusions...) from the task's
`report_sections`, so every task gets a report and adds what only it knows.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from finekit.report.html import (  # noqa: E402
    esc,
    figure_from_file,
    figure_from_matplotlib,
    page,
    render,
    table,
)
from finekit.rundir import RECIPE, RUN_JSON, TUNE, read_json  # noqa: E402

log = logging.getLogger(__name__)
REPORT = "report.html"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


VALIDATION = ("o-", "#d94801")  # (marker style, colour) of each evaluated series
TRAIN_SUBSET = ("s--", "#31a354")


def _series(
    ax: Any, rows: list[dict[str, Any]], key: str, style: tuple[str, str], label: str
) -> bool:
    """Plot `key` of evaluation rows against the step; False when there is nothing."""
    if not rows or key not in rows[0]:
        return False
    ax.plot(
        [r["step"] for r in rows], [r[key] for r in rows], style[0], color=style[1], label=label
    )
    return True


def curves_figure(
    rows: list[dict[str, Any]], metric: str, marks: dict[str, int] | None = None
) -> str | None:
    """Loss (train per step, smoothed; validation and training subset per evaluation) and
    the headline metric (validation vs training subset): the overfitting gap at a glance."""
    train = [r for r in rows if r["split"] == "train" and r.get("loss") is not None]
    val = [r for r in rows if r["split"] == "validation"]
    tre = [r for r in rows if r["split"] == "train_eval"]
    if not train:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    steps = [r["step"] for r in train]
    losses = [r["loss"] for r in train]
    ema, smooth = losses[0], []
    for x in losses:  # exponential moving average, like TensorBoard's smoothing
        ema = 0.9 * ema + 0.1 * x
        smooth.append(ema)
    ax1.plot(steps, losses, color="#9ecae1", lw=0.8, label="train (per step)")
    ax1.plot(steps, smooth, color="#08519c", lw=1.6, label="train (smoothed)")
    _series(ax1, val, "loss", VALIDATION, "validation")
    _series(ax1, tre, "loss", TRAIN_SUBSET, "training subset (eval mode)")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("loss")
    ax1.set_title("Loss")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    if _series(ax2, val, metric, VALIDATION, "validation"):
        _series(ax2, tre, metric, TRAIN_SUBSET, "training subset")
        ax2.set_xlabel("optimizer step")
        ax2.set_ylabel(metric)
        ax2.set_title(f"{metric}: training vs validation")
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3)
    else:
        ax2.set_axis_off()
    for label, step in (marks or {}).items():  # e.g. the overfitting alarm, early stop
        for ax in (ax1, ax2):
            if ax.axison:
                ax.axvline(
                    step,
                    color="#cf222e" if "overfit" in label else "#6e7781",
                    ls=":",
                    lw=1.4,
                    label=label,
                )
        ax1.legend(fontsize=8)
        if ax2.axison:
            ax2.legend(fontsize=8)
    fig.tight_layout()
    return figure_from_matplotlib(
        fig,
        "Training curves. A widening gap between the training subset and validation "
        "while validation stops improving is the signature of overfitting.",
    )


def metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    splits = list(metrics)
    keys: list[str] = []
    for m in metrics.values():
        keys += [k for k, v in m.items() if isinstance(v, (int, float)) and k not in keys]
    rows = [[k, *[metrics[s].get(k, "") for s in splits]] for k in keys]
    return table(["metric", *splits], rows)


def run_report(run_dir: Path) -> Path:
    """Write run_dir/report.html and return its path."""
    run = read_json(run_dir / RUN_JSON)
    recipe_text = (run_dir / RECIPE).read_text(encoding="utf-8")
    rows = read_metrics(run_dir)
    metric = "accuracy"
    try:
        from finekit.recipe import Recipe

        recipe = Recipe.from_yaml(run_dir / RECIPE)
        metric = recipe.evaluation.metric
    except Exception as e:  # a report must render even for an odd run
        log.warning("report: recipe not readable (%s)", e)
        recipe = None
    sections: list[tuple[str, str]] = []
    metrics = run.get("metrics", {})
    train = run.get("train", {})

    kpis = []
    for split in ("test", "validation"):
        if split in metrics and isinstance(metrics[split].get(metric), int | float):
            kpis.append(
                f"<span class=kpi>{esc(split)} {esc(metric)}"
                f"<b>{metrics[split][metric]:.4f}</b></span>"
            )
    if train:
        kpis.append(f"<span class=kpi>training time<b>{train.get('seconds', 0):.0f} s</b></span>")
        kpis.append(
            f"<span class=kpi>trainable parameters"
            f"<b>{train.get('trainable_parameters', 0):,}</b></span>"
        )
    model = run.get("model", {})
    intro = (
        f"<p>{esc(recipe.description if recipe else '')}</p>"
        f"<p>Task <b>{esc(run.get('task', '?'))}</b>, method <b>{esc(run.get('method', '?'))}</b>, "
        f"model <code>{esc(model.get('path', '?'))}</code> ({esc(model.get('init', ''))}), "
        f"status <b>{esc(run.get('status'))}</b>, finished {esc(run.get('finished_at', '—'))}.</p>"
        + "".join(kpis)
    )
    for alarm in run.get("alarms", []) or []:
        intro += f"<p class=warn>{esc(alarm)}</p>"

    if metrics:
        html_ = metrics_table(metrics)
        html_ += (
            "<p class=muted>Metrics of the exported model reloaded from "
            "<code>model/</code> (fp32), as <code>finekit eval</code> reproduces them.</p>"
        )
        sections.append(("Results", html_))
    marks: dict[str, int] = {}  # drawn in this order: the alarm last, on top
    if (run.get("restored_best") or {}).get("step") is not None:
        step = int(run["restored_best"]["step"])
        marks[f"best, exported (step {step})"] = step
    es = run.get("early_stopping") or {}
    if es.get("stopped_at"):
        marks[f"early stop (step {es['stopped_at']})"] = int(es["stopped_at"])
    of = run.get("overfitting") or {}
    if of.get("detected"):
        marks[f"overfitting from step {of['step']}"] = int(of["step"])
    fig = curves_figure(rows, metric, marks)
    if fig:
        sections.append(("Training curves", fig + _train_table(train)))
    slices = _slices_section(metrics, metric)
    if slices:
        sections.append(("Slices", slices))
    risks = _risks_section(run)
    if risks:
        sections.append(("Forgetting and overfitting", risks))
    # Task sections: data summary, per-class, confusions...
    if recipe is not None:
        try:
            from finekit.core.contracts import build_task, capabilities

            own = capabilities(build_task(recipe.task)).report_sections
            if own is not None:
                for sec in own.report_sections(run_dir, recipe, run):
                    sections.append((sec.title, render(sec.blocks, run_dir)))
        except Exception as e:
            log.warning("report: task sections skipped: %s", e)
            sections.append(("Task details", f"<p class=warn>Not available: {esc(e)}</p>"))
    figures = sorted((run_dir / "eval").glob("*.png")) if (run_dir / "eval").is_dir() else []
    if figures and not any(t == "Confusions" for t, _ in sections):
        sections.append(
            (
                "Evaluation plots",
                "".join(figure_from_file(p, p.stem.replace("_", " ")) for p in figures),
            )
        )
    chosen = _auto_section(run.get("auto") or {})
    if chosen:
        sections.append(("Settings chosen from the data (auto)", chosen))
    tuned = _tune_section(run_dir)
    if tuned:
        sections.append(("Auto-tune (chosen on validation)", tuned))
    sections.append(("Recipe (resolved)", f"<pre>{esc(recipe_text)}</pre>"))
    sections.append(("Run directory", _files_table(run_dir)))
    out = run_dir / REPORT
    title = f"finekit run — {run.get('name', run_dir.name)}"
    out.write_text(page(title, sections, intro), encoding="utf-8")
    return out


def _slices_section(metrics: dict[str, Any], metric: str) -> str:
    """Per-slice metric tables; flagged gaps in red."""
    parts = []
    for split, m in metrics.items():
        for col, e in (m.get("slices") or {}).items():
            cap = f"{split}: {col}"
            if e.get("gap") is not None:
                cap += f" — gap {e['gap']:.3f} (worst {e['worst']}, best {e['best']})"
            if "gap_tuned" in e:  # the base model beside the tuned one
                shown = e.get("metric", metric)
                rows = [
                    [v, d.get("base"), d.get("tuned"), d["examples"]]
                    for v, d in e["by_value"].items()
                ]
                gb, gt = e.get("gap_base"), e.get("gap_tuned")
                cap += (
                    f"; base ({e.get('base')}) gap "
                    f"{'—' if gb is None else f'{gb:.3f}'}, tuned gap "
                    f"{'—' if gt is None else f'{gt:.3f}'}"
                )
                parts.append(
                    table([col, f"base {shown}", f"tuned {shown}", "examples"], rows, caption=cap)
                )
                if e.get("gap_widened"):
                    parts.append(
                        f"<p class=warn>Fine-tuning widened the slice gap on {esc(split)}: "
                        f"{esc(col)}.</p>"
                    )
            else:
                rows = [
                    [v, d.get(metric), d.get("accuracy"), d["examples"]]
                    for v, d in e["by_value"].items()
                ]
                parts.append(table([col, metric, "accuracy", "examples"], rows, caption=cap))
            if e.get("flagged"):
                parts.append(f"<p class=warn>Slice gap flagged on {esc(split)}: {esc(col)}.</p>")
    return "".join(parts)


def _risks_section(run: dict[str, Any]) -> str:
    """Retention of the base model's skill, early stopping, the alarm, regularisers."""
    parts = []
    ret = run.get("retention")
    if ret:
        after = ret.get("after", {})
        parts.append(
            "<h3>Retention of general language</h3>"
            + table(
                ["measure", "before", "after"],
                [[k, ret["before"].get(k, ""), v] for k, v in after.items()],
            )
            + f"<p class=muted>Reference: {esc(ret.get('reference'))}, "
            f"{ret.get('sentences')} sentences; "
            + esc(
                ret.get("note")
                or "1.0 = the base model's embedding geometry intact (Spearman of pairwise "
                "similarities / mean cosine)."
            )
            + "</p>"
        )
        per = ret.get("per_evaluation") or []
        if len(per) > 1 and "retention_similarity" in per[0]:
            fig, ax = plt.subplots(figsize=(6, 2.6))
            ax.plot(
                [p["step"] for p in per],
                [p["retention_similarity"] for p in per],
                "o-",
                label="similarity preservation",
            )
            if "retention_cosine" in per[0]:
                ax.plot(
                    [p["step"] for p in per],
                    [p["retention_cosine"] for p in per],
                    "s--",
                    label="embedding cosine",
                )
            ax.set_ylim(min(0.0, *[p["retention_similarity"] for p in per]) - 0.02, 1.02)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("retention")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            parts.append(figure_from_matplotlib(fig, "Retention per evaluation."))
    es = run.get("early_stopping") or {}
    if es.get("patience"):
        parts.append(
            "<h3>Early stopping</h3>"
            + table(
                ["metric", "mode", "patience", "best", "best step", "stopped at"],
                [
                    [
                        es.get("metric"),
                        es.get("mode"),
                        es.get("patience"),
                        es.get("best"),
                        es.get("best_step"),
                        es.get("stopped_at") or "— (ran to the end)",
                    ]
                ],
            )
        )
    of = run.get("overfitting") or {}
    if of:
        msg = (
            of.get("message")
            if of.get("detected")
            else (f"No overfitting alarm over {of.get('evaluations', 0)} evaluations.")
        )
        parts.append(f"<p class={'warn' if of.get('detected') else 'ok'}>{esc(msg)}</p>")
    regs = run.get("regularisers") or {}
    if regs:
        parts.append(
            table(
                ["regulariser", "alpha", "distance to the base weights"],
                [[k, v.get("alpha"), v.get("distance_to_base")] for k, v in regs.items()],
            )
        )
    return "".join(parts)


def _auto_section(auto: dict[str, Any]) -> str:
    """What `training.auto` chose (and why), and what the user set over it."""
    chosen, overridden = auto.get("chosen") or {}, auto.get("overridden") or {}
    if not chosen and not overridden:
        return ""
    rows = [[k, _quantity(c["value"]), c["reason"], c["source"]] for k, c in chosen.items()]
    rows += [
        [k, _quantity(o["yours"]), f"yours (auto: {_quantity(o['auto'])}; {o['reason']})", "you"]
        for k, o in overridden.items()
    ]
    facts = auto.get("facts") or {}
    note = ", ".join(f"{k} {v}" for k, v in facts.items() if v is not None)
    return table(["field", "value", "why", "source"], rows) + (
        f"<p class=muted>From the data and the model: {esc(note)}.</p>" if note else ""
    )


def _tune_section(run_dir: Path) -> str:
    """--auto-tune's search: every trial's validation score and settings, and its plot."""
    path = run_dir / TUNE / "trials.json"
    if not path.is_file():
        return ""
    rec = json.loads(path.read_text(encoding="utf-8"))
    default = rec.get("default_value")
    rows = [
        [
            t["number"],
            t["origin"],
            "—" if t["value"] is None else f"{t['value']:.4f}",
            ", ".join(f"{k}={v:.3g}" for k, v in (t.get("params") or {}).items()),
            t.get("seconds") or "",
        ]
        for t in rec["trials"]
    ]
    plot = run_dir / TUNE / "trials.png"
    return (
        f"<p>{len(rec['trials'])} trials ({esc(rec['sampler'])}); validation "
        f"{esc(rec['metric'])}: best {rec['best_value']:.4f} (trial {rec['best_trial']}) vs "
        + ("n/a" if default is None else f"{default:.4f}")
        + " with the auto settings. The test split was not scored while choosing.</p>"
        + (figure_from_file(plot, "validation score per trial") if plot.is_file() else "")
        + table(["trial", "origin", f"validation {rec['metric']}", "settings", "s"], rows)
    )


def _train_table(train: dict[str, Any]) -> str:
    keys = [
        "seconds",
        "samples_per_second",
        "tokens_per_second",
        "steps",
        "epochs",
        "samples_seen",
        "trainable_parameters",
        "total_parameters",
        "precision",
        "device",
        "num_processes",
        "resumed_from",
    ]
    return table(["training", "value"], [[k, _quantity(train[k])] for k in keys if k in train])


def _quantity(x: Any) -> Any:
    """A count or a measurement as a person reads it: 15 epochs, not 15.0000; 119.2 s."""
    if x is None:
        return "—"
    if not isinstance(x, float) or not math.isfinite(x):
        return x
    if x.is_integer():
        return int(x)
    return f"{x:,.1f}" if abs(x) >= 1 else f"{x:.3g}"


def _bytes(n: int) -> str:
    """Decimal units, as file managers show them: 812 B, 4.1 kB, 91.7 MB."""
    if n < 1000:
        return f"{n} B"
    size, units = n / 1000, ["kB", "MB", "GB", "TB"]
    while size >= 999.95 and len(units) > 1:
        size, units = size / 1000, units[1:]
    return f"{size:.1f} {units[0]}"


def _files_table(run_dir: Path) -> str:
    rows = []
    for p in sorted(run_dir.iterdir()):
        if p.name.startswith("."):
            continue
        size = (
            sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            if p.is_dir()
            else p.stat().st_size
        )
        rows.append([p.name + ("/" if p.is_dir() else ""), _bytes(size)])
    return table(["file", "size"], rows) + (f"<p class=muted>{esc(run_dir.resolve())}</p>")


__all__ = ["REPORT", "curves_figure", "read_metrics", "run_report"]
