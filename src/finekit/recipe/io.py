"""Recipe input and output: YAML files, `--set a.b=value` overrides, merging sections, and
pydantic's errors turned into one line per field naming what is allowed."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from finekit.errors import RecipeError, RegistryError


def read_yaml(p: Path) -> Any:
    """A recipe file's YAML, with a clear error for a missing or unreadable file."""
    if not p.is_file():
        raise RecipeError(f"recipe file {p} does not exist")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe file {p} is not valid UTF-8 YAML: {e}") from None


# Task and method sections are validated by the config classes their plug-ins register.
SECTION_REGISTRIES: dict[str, Any] = {}


def section_registry(kind: str) -> Any:
    """The task or method registry (filled with the plug-ins on first lookup)."""
    if not SECTION_REGISTRIES:
        from finekit.core.contracts import METHODS, TASKS

        SECTION_REGISTRIES.update(task=TASKS, method=METHODS)
    return SECTION_REGISTRIES[kind]


def undot(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        parts = key.replace("__", ".").split(".")
        cur = out
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge `update` into a copy of `base`; nested dicts merge, other values replace.

    A task/method `name` change replaces the whole section (options of one method mean
    nothing to another); with a task change, an `evaluation.metric` that was the old task's
    default goes too, so the new task's default applies.
    """
    out = copy.deepcopy(base)
    _drop_old_default_metric(out, update)
    for key, value in update.items():
        if isinstance(value, str) and key in ("task", "method"):
            value = {"name": value}
        if isinstance(value, str) and key == "model":
            value = {"path": value}
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if key in ("task", "method") and value.get("name", out[key].get("name")) != out[
                key
            ].get("name"):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _task_name(section: Any) -> Any:
    return section.get("name") if isinstance(section, dict) else section


def _drop_old_default_metric(out: dict[str, Any], update: dict[str, Any]) -> None:
    old, new = _task_name(out.get("task")), _task_name(update.get("task"))
    ev, asked = out.get("evaluation"), update.get("evaluation")
    if new is None or new == old or not isinstance(ev, dict) or "metric" not in ev:
        return
    if isinstance(asked, dict) and "metric" in asked:
        return  # the update names the metric itself
    try:
        default = section_registry("task").get(old or "classify").config_cls.default_metric
    except RegistryError:
        return
    if ev["metric"] == default:
        out["evaluation"] = {k: v for k, v in ev.items() if k != "metric"}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` strings; values are parsed as YAML (3e-5, true, [a, b])."""
    update: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected FIELD=VALUE, e.g. training.lr=3e-5")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise RecipeError(f"--set {item!r}: empty field name")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        # YAML 1.1 reads 3e-5 as a string; numbers are what users mean.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value) if any(c in value for c in ".eE") else int(value)
        update = deep_merge(update, undot({key: value}))
    return deep_merge(data, update)


def explain(err: ValidationError, data: dict[str, Any], root: Any) -> str:
    """Turn pydantic's errors into `field: problem (allowed ...)` messages."""
    msgs = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"] if not str(x).startswith("function-")]
        # Drop the pydantic union/class tags (e.g. 'LoraConfig') from the path.
        loc = [x for x in loc if not x[:1].isupper()]
        field = ".".join(loc) or "recipe"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc[:-1], data, root)
            msgs.append(f"unknown field {field!r}" + (f"; allowed: {allowed}" if allowed else ""))
        elif e["type"] == "missing":
            msgs.append(f"missing required field {field!r}")
        else:
            got = e.get("input")
            shown = repr(got) if not isinstance(got, dict) else "a mapping"
            msgs.append(f"field {field!r}: {e['msg']} (got {shown})")
    return "; ".join(msgs)


def _allowed_fields(loc: list[str], data: dict[str, Any], root: Any) -> str:
    cls: Any = root
    for part in loc:
        field = cls.model_fields.get(part) if hasattr(cls, "model_fields") else None
        if field is None:
            return ""
        ann = field.annotation
        if part in ("task", "method"):
            section = data.get(part)
            name = section.get("name") if isinstance(section, dict) else section
            try:
                default = "classify" if part == "task" else "full"
                cls = section_registry(part).get(name or default).config_cls
            except RegistryError:
                return ""
        else:
            cls = ann
    return ", ".join(cls.model_fields) if hasattr(cls, "model_fields") else ""
