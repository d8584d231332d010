"""Print the package-level import graph of finekit as a Mermaid diagram, from the code.

    python docs/tools/layers.py            # print it
    python docs/tools/layers.py --write    # refresh the diagram in docs/ARCHITECTURE.md

Edges are the imports grimp finds (inside functions too, TYPE_CHECKING excluded), reduced
to the packages under `finekit` and with edges implied by others left out (transitive
reduction), so the picture shows the layering rather than every arrow.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

DOC = Path(__file__).resolve().parents[1] / "ARCHITECTURE.md"
BEGIN, END = "<!-- layers:begin -->", "<!-- layers:end -->"
SKIP = {"errors", "version", "plugins"}  # imported by nearly everything / by nothing


def package_edges() -> dict[str, set[str]]:
    graph = grimp.build_graph("finekit", exclude_type_checking_imports=True)
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        parts = module.split(".")
        if len(parts) < 2 or parts[1] in SKIP:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            other = imported.split(".")
            if len(other) < 2 or other[1] in SKIP or other[1] == parts[1]:
                continue
            edges.setdefault(parts[1], set()).add(other[1])
    return edges


def reduce(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop a -> c where a -> ... -> c through other packages (the graph is acyclic)."""

    def reach(a: str, skip: str) -> set[str]:
        seen: set[str] = set()
        todo = [b for b in edges.get(a, ()) if b != skip]
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.add(x)
                todo.extend(edges.get(x, ()))
        return seen

    return {a: {c for c in cs if c not in reach(a, c)} for a, cs in edges.items()}


def mermaid() -> str:
    lines = ["```mermaid", "graph TD"]
    for a, cs in sorted(reduce(package_edges()).items()):
        lines += [f"  {a} --> {c}" for c in sorted(cs)]
    return "\n".join([*lines, "```"])


def main() -> None:
    text = mermaid()
    if "--write" not in sys.argv:
        print(text)
        return
    doc = DOC.read_text(encoding="utf-8")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    main()
