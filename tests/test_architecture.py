"""The design rules the code must keep: layers without import cycles (imports inside
functions counted), no task probed with getattr/hasattr, a run that reads in one screen,
and the task contract checked where a task is built."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from finekit.core.contracts import (
    CAPABILITIES,
    TASKS,
    Task,
    build_task,
    capabilities,
    register_task,
)
from finekit.errors import RegistryError
from finekit.recipe import TaskConfig

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "finekit"


def test_layers_hold_with_imports_inside_functions_counted() -> None:
    """pyproject's importlinter contracts (the same check as `make lint`)."""
    out = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_no_import_cycle_between_any_two_modules() -> None:
    import grimp

    graph = grimp.build_graph("finekit", exclude_type_checking_imports=True)
    adj = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    # Tarjan's strongly connected components: a component of 2+ modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(adj):
        if m not in index:
            visit(m)
    assert cycles == []


def _probes_of_tasks(path: Path) -> list[str]:
    """getattr/hasattr calls whose object is a task (`task`, `self.task`, `s.task`...)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and node.args
        ):
            continue
        target = node.args[0]
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "task" or name.endswith("_task"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_task_is_probed_with_getattr_or_hasattr() -> None:
    probes = [p for f in sorted(SRC.rglob("*.py")) for p in _probes_of_tasks(f)]
    assert probes == [], "ask capabilities(task) instead: " + ", ".join(probes)


def test_the_probe_finder_finds_probes(tmp_path: Path) -> None:
    f = ROOT / "tests" / "_probe_sample.py"
    f.write_text("x = getattr(self.task, 'labels', None)\ny = hasattr(task, 'baseline')\n")
    try:
        assert len(_probes_of_tasks(f)) == 2
    finally:
        f.unlink()


def test_a_run_reads_in_one_screen() -> None:
    import importlib

    module = importlib.import_module("finekit.run.finetune")  # the module, not the function
    src = inspect.getsource(module.finetune) + inspect.getsource(module._run)
    assert len(src.splitlines()) <= 150


class _Half:
    """A task that forgot most of the core."""

    name = "half"
    size_unit = "rows"
    metric_names = ("accuracy",)

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    def prepare(self, splits, recipe):  # noqa: ANN001, ANN201
        raise NotImplementedError


def test_a_task_missing_core_members_is_named_when_built() -> None:
    if "half" not in TASKS:
        register_task("half", TaskConfig, _Half)
    with pytest.raises(RegistryError, match=r"task 'half' does not implement .*encode.*loss"):
        build_task(TaskConfig(name="half"))


def test_capabilities_are_found_by_protocol_not_by_name() -> None:
    from finekit.tasks.chat.task import ChatConfig
    from finekit.tasks.classify.config import ClassifyConfig
    from finekit.tasks.lm.causal import CausalLMConfig

    text = build_task(ClassifyConfig(modality="text"))
    image = build_task(ClassifyConfig(modality="image"))
    lm = build_task(CausalLMConfig())
    assert isinstance(text, Task) and isinstance(lm, Task)
    caps = {n: capabilities(t) for n, t in (("text", text), ("image", image), ("lm", lm))}
    assert caps["text"].classes is text and caps["text"].attach is text
    assert caps["text"].baseline is None and caps["text"].files is None
    assert caps["image"].explain is image and caps["image"].files is image
    assert caps["lm"].baseline is lm and caps["lm"].retention is lm
    assert caps["lm"].classes is None and caps["lm"].generate is None
    assert set(CAPABILITIES) == set(vars(caps["lm"]))  # one field per declared capability
    # chat: its own retention (general English), replies, generation scores, EWC data.
    chat = capabilities(build_task(ChatConfig()))
    assert None not in (chat.retention, chat.generate, chat.generation_metrics, chat.fisher_data)


def test_the_architecture_diagram_is_the_code_s() -> None:
    """docs/ARCHITECTURE.md's import diagram is what docs/tools/layers.py generates now
    (refresh it with `python docs/tools/layers.py --write`)."""
    import runpy

    tool = runpy.run_path(str(ROOT / "docs" / "tools" / "layers.py"))
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert tool["mermaid"]() in doc


def test_no_task_inherits_from_another() -> None:
    """Tasks share functions, not base classes (a subclass inherits behaviour it never
    asked for, e.g. text helpers on an image task)."""
    found = []
    for f in sorted((SRC / "tasks").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Task"):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.endswith("Task") for b in bases):
                    found.append(f"{f.relative_to(ROOT)}: {node.name}({', '.join(bases)})")
    assert found == []


def test_a_method_missing_part_of_the_contract_is_named_when_built() -> None:
    from finekit.core.contracts import METHODS
    from finekit.methods.base import build_method, register_method
    from finekit.recipe import MethodConfig

    class Apply:  # no export, no callbacks/schedule_steps
        def __init__(self, config: MethodConfig) -> None:
            self.config = config

        def apply(self, model, ctx):  # noqa: ANN001, ANN201
            return model

    if "apply_only" not in METHODS:
        register_method("apply_only", MethodConfig, Apply)
    with pytest.raises(RegistryError, match=r"'apply_only' does not implement .*callbacks.*export"):
        build_method(MethodConfig(name="apply_only"))
