"""A tiny, dependency-free HTML page builder: escaped text, tables, embedded PNG figures.

The page is self-contained (figures are base64 data URIs, CSS inline, no scripts, no
network) so it opens from disk, mails as one file and prints.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from finekit.core.contracts import Bullets, Figure, Heading, Table, Text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1100px;padding:1.2rem 1.6rem;color:#1b1f24;line-height:1.45}
h1{font-size:1.6rem;margin:.2rem 0 .4rem}h2{font-size:1.25rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.2rem}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:right;vertical-align:top}
th{background:#f6f8fa}td.l,th.l{text-align:left}
figure{margin:.8rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#57606a}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:.8rem;max-height:28rem}
.kpi{display:inline-block;margin:.3rem 1.2rem .3rem 0}.kpi b{font-size:1.5rem;display:block}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:.4rem .7rem;border-radius:4px}
.ok{color:#1a7f37}.bad{color:#cf222e}.muted{color:#57606a;font-size:.85rem}
@media print{body{max-width:none;padding:0}h2{page-break-after:avoid}
figure,table{page-break-inside:avoid}pre{max-height:none}}
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int) and abs(x) >= 10_000:
        return f"{x:,}"
    return esc(x)


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    left: int = 1,
    caption: str | None = None,
    text_columns: Sequence[int] = (),
) -> str:
    """`left` = how many leading columns are text (left-aligned), `text_columns` = other
    text columns by index (numbers align right)."""
    cls = ["l" if i < left or i in text_columns else "" for i in range(len(header))]
    head = "".join(f'<th class="{cls[i]}">{esc(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{cls[i] if i < len(cls) else ""}">'
            f"{c if isinstance(c, Raw) else fmt(c)}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    cap = f"<caption class=muted>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Raw(str):
    """Already-safe HTML inside a table cell."""


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_from_file(path: Path, caption: str) -> str:
    return figure_from_bytes(path.read_bytes(), caption)


def figure_from_bytes(data: bytes, caption: str) -> str:
    return (
        f'<figure><img src="{png_data_uri(data)}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def figure_from_matplotlib(fig: Any, caption: str, dpi: int = 100) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return figure_from_bytes(buf.getvalue(), caption)


def page(title: str, sections: list[tuple[str, str]], intro: str = "") -> str:
    nav = " · ".join(f'<a href="#s{i}">{esc(t)}</a>' for i, (t, _) in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{esc(t)}</h2>{h}' for i, (t, h) in enumerate(sections))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1>{intro}<p class=muted>{nav}</p>{body}"
        "<p class=muted>Written by finekit. Self-contained: no scripts, no network.</p>"
        "</body></html>"
    )


def render(blocks: Sequence[Any], run_dir: Path) -> str:
    """HTML of a task's report data (`finekit.core.contracts` blocks), escaped."""
    parts = []
    for b in blocks:
        if isinstance(b, Text):
            tone = "" if b.tone == "plain" else f" class={b.tone}"
            parts.append(f"<p{tone}>{esc(b.text)}</p>")
        elif isinstance(b, Heading):
            parts.append(f"<h3>{esc(b.text)}</h3>")
        elif isinstance(b, Table):
            rows = [
                [Raw("<br>".join(esc(x) for x in c)) if isinstance(c, list) else c for c in r]
                for r in b.rows
            ]
            parts.append(table(b.header, rows, b.left, b.caption, b.text_columns))
        elif isinstance(b, Figure):
            if b.png is not None:
                parts.append(figure_from_bytes(b.png, b.caption))
            elif b.path is not None and (run_dir / b.path).is_file():
                parts.append(figure_from_file(run_dir / b.path, b.caption))
        elif isinstance(b, Bullets):
            tone = "" if b.tone == "plain" else f" class={b.tone}"
            parts.append(f"<ul{tone}>" + "".join(f"<li>{esc(x)}</li>" for x in b.items) + "</ul>")
        else:
            raise TypeError(f"report: unknown block {type(b).__name__}")
    return "".join(parts)
