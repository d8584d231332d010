"""Where a recipe file's paths point: relative paths resolve against the recipe file's own
folder (not the working directory), and a recipe that names a public data set
(`data.dataset`) finds its files in a local data folder first: `--data-dir`, else the
`FINEKIT_DATA` environment variable, else `~/.cache/finekit/data`. With the files in none of
them, loading stops with one line: what to download, from where, under which licence, and
where to put it. finekit never downloads a data set by itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from finekit.errors import DataError

DATA_ENV = "FINEKIT_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/finekit/data")
SPLIT_FIELDS = ("train", "validation", "test")


def data_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """The folders a named data set is looked for in, first match wins."""
    if data_dir:
        return [Path(data_dir).expanduser()]
    env = os.environ.get(DATA_ENV)
    return [Path(env).expanduser()] if env else [DEFAULT_DATA_DIR.expanduser()]


def _is_local(value: Any) -> bool:
    return (
        isinstance(value, str)
        and bool(value)
        and "://" not in value
        and not value.startswith("finekit:")
        and not Path(value).expanduser().is_absolute()
    )


def _against(base: Path, value: str) -> str:
    return str((base / Path(value).expanduser()).resolve())


def resolve_paths(
    data: dict[str, Any],
    recipe_file: Path,
    data_dir: str | Path | None,
    skip: set[str] | None = None,
) -> None:
    """Rewrite, in place, the relative paths of a recipe file's raw mapping: the split files
    of a named data set into its folder under the data directory; every other path against
    the recipe file's folder. A model path is resolved only where it names an existing
    file or folder there (`org/name` is a hub id). `skip`: data fields the command line replaces."""
    d = data.get("data")
    held: dict[str, Any] = {}
    if isinstance(d, dict):  # replaced after this: neither looked for nor resolved here
        held = {k: d.pop(k) for k in (skip or set()) & set(SPLIT_FIELDS) if k in d}
        ds = d.get("dataset")
        if isinstance(ds, dict) and ds.get("name"):
            _locate_dataset(d, ds, str(recipe_file), data_dir)
    anchor(data, recipe_file.resolve().parent)
    if isinstance(d, dict):
        d.update(held)


def anchor(data: dict[str, Any], base: Path) -> None:
    """Make every relative local path of a raw recipe mapping absolute against `base` (a
    recipe file's folder; the working directory for flags, `--set` and Python dicts).
    Stored recipes (run directories, seeds, compare) then read the same from anywhere."""
    d = data.get("data")
    if isinstance(d, dict):
        for key in SPLIT_FIELDS:
            if _is_local(d.get(key)):
                d[key] = _against(base, d[key])
        replay = d.get("replay")
        if isinstance(replay, dict) and _is_local(replay.get("path")):
            replay["path"] = _against(base, replay["path"])
    ev = data.get("evaluation")
    if isinstance(ev, dict):
        for key in ("edge_cases", "retention_reference"):
            if _is_local(ev.get(key)):
                ev[key] = _against(base, ev[key])
        for g in ev.get("guard") or []:
            if isinstance(g, dict) and _is_local(g.get("path")):
                g["path"] = _against(base, g["path"])
    model = data.get("model")
    path = model.get("path") if isinstance(model, dict) else model
    if _is_local(path) and (base / str(path)).exists():  # else a hub id such as org/name
        if isinstance(model, dict):
            model["path"] = _against(base, str(path))
        else:
            data["model"] = _against(base, str(path))


def _locate_dataset(
    d: dict[str, Any], ds: dict[str, Any], source: str, data_dir: str | Path | None
) -> None:
    name = str(ds["name"])
    files = [d[k] for k in SPLIT_FIELDS if _is_local(d.get(k))]
    if not files:  # already absolute (a run directory's recipe.yaml), or hf://
        return
    dirs = data_dirs(data_dir)
    for root in dirs:
        folder = root / name
        if files and all((folder / f).exists() for f in files):
            for k in SPLIT_FIELDS:
                if _is_local(d.get(k)):
                    d[k] = str((folder / d[k]).resolve())
            return
    where = dirs[0] / name
    origin = " or ".join(
        x
        for x in (
            f"https://huggingface.co/datasets/{ds['hf_id']}" if ds.get("hf_id") else None,
            ds.get("url"),
        )
        if x
    )
    raise DataError(
        f"{source}: data set {name!r} not found ({', '.join(files)} in "
        f"{', '.join(str(r / name) for r in dirs)}); download it from {origin or 'its source'}"
        f" (licence: {ds.get('licence') or 'see the source'}) and put {', '.join(files)} in "
        f"{where}/ — or point --data-dir (or {DATA_ENV}) at the folder that holds {name}/"
    )
