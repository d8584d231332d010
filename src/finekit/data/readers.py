"""Readers: a file, a saved HF `datasets` folder or an `hf://` name -> a pandas DataFrame.

Plain-text corpora (`text`: a .txt file or a folder of .txt/.md files) give one row per
file, columns `text` and `source`, for self-supervised language-model training.

Every failure names the file and the fix (missing, not UTF-8, not parseable, empty).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from finekit.errors import DataError

# Split names inside an HF DatasetDict, by finekit split (data.hf_splits renames them).
HF_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
log = logging.getLogger(__name__)

SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "text",
    ".md": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".npz": "npz",
}
TEXT_SUFFIXES = (".txt", ".md")
HF_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")


def is_text_folder(p: Path) -> bool:
    """A folder whose files are all .txt/.md (hidden files ignored), at least one of them."""
    files = [f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
    return bool(files) and all(f.suffix.lower() in TEXT_SUFFIXES for f in files)


def detect_format(path: str) -> str:
    """Guess the format of `path` from its suffix or folder content."""
    if path.startswith("hf://"):
        return "hf"
    p = Path(path)
    if p.is_dir():
        if any((p / f).exists() for f in HF_MARKERS):
            return "hf"
        if is_text_folder(p):
            return "text"
        return "images"  # one sub-folder per class
    fmt = SUFFIX_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{p}: cannot tell the format from the suffix {p.suffix!r}; use one of "
            f"{sorted(SUFFIX_FORMATS)} or set data.format"
        )
    return fmt


def dataset_dict_splits(path: str) -> list[str]:
    """The splits of a DatasetDict saved on disk (from datasets' dataset_dict.json); [] for
    anything else."""
    meta = Path(path) / "dataset_dict.json"
    if path.startswith("hf://") or not meta.is_file():
        return []
    return [str(s) for s in json.loads(meta.read_text(encoding="utf-8")).get("splits", [])]


def read_table(
    path: str, fmt: str = "auto", hf_split: str | None = None, str_columns: list[str] | None = None
) -> pd.DataFrame:
    """Read one split as a DataFrame. `hf_split` picks a split of a DatasetDict;
    `str_columns` are read as text (labels "01" and "1" stay different)."""
    dtype = dict.fromkeys(str_columns or [], str)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "text":
        return read_text_corpus(path)
    if fmt != "hf" and not Path(path).is_file():
        raise DataError(f"data file {path} does not exist (check data.train/validation/test)")
    try:
        if fmt == "csv":
            df = pd.read_csv(
                path, encoding="utf-8", keep_default_na=False, na_values=[""], dtype=dtype
            )
        elif fmt == "tsv":
            df = pd.read_csv(
                path,
                sep="\t",
                encoding="utf-8",
                keep_default_na=False,
                na_values=[""],
                dtype=dtype,
                quoting=3,  # csv.QUOTE_NONE: TSV corpora (GLUE) carry bare quotes in text
            )
        elif fmt == "jsonl":
            df = _read_json_lines(path)
        elif fmt == "parquet":
            df = pd.read_parquet(path)
        elif fmt == "hf":
            df = _read_hf(path, hf_split)
        else:  # pragma: no cover - guarded by the recipe's Literal
            raise DataError(f"{path}: unknown format {fmt!r}")
    except UnicodeDecodeError as e:
        raise DataError(
            f"data file {path} is not UTF-8 (byte {e.start}: {e.reason}); re-save it as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"data file {path} is empty") from None
    except (pd.errors.ParserError, ValueError, OSError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"data file {path} could not be read as {fmt}: {e}") from None
    if len(df) == 0:
        raise DataError(f"data file {path} has a header but no rows")
    return df


def _read_json_lines(path: str) -> pd.DataFrame:
    rows = []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of records
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"data file {path} is not valid JSON: {e}") from None
        return pd.DataFrame.from_records(data)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"data file {path} line {lineno} is not valid JSON: {e.msg}") from None
    return pd.DataFrame.from_records(rows)


def _read_hf(path: str, split: str | None) -> pd.DataFrame:
    import datasets

    try:
        if path.startswith("hf://"):
            ds = datasets.load_dataset(path[len("hf://") :])
        else:
            ds = datasets.load_from_disk(path)
    except Exception as e:  # datasets raises many types; all mean "cannot load this"
        raise DataError(f"HF dataset {path} could not be loaded: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None or split not in ds:
            raise DataError(
                f"HF dataset {path} has splits {list(ds)}; split {split!r} is not one of them "
                "(training: set data.hf_splits; eval/predict: save the split alone)"
            )
        ds = ds[split]
    return ds.to_pandas()


def read_text_corpus(path: str) -> pd.DataFrame:
    """A .txt/.md file or a folder of them -> one row per file (`text`, `source`), in
    sorted path order so splits are reproducible. Empty or binary files are errors."""
    p = Path(path)
    if p.is_dir():
        files = sorted(
            f
            for f in p.rglob("*")
            if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES and not f.name.startswith(".")
        )
        if not files:
            raise DataError(
                f"data folder {path} has no text files (.txt/.md); put the corpus there as "
                "UTF-8 text files"
            )
    elif p.is_file():
        files = [p]
    else:
        raise DataError(f"data file {path} does not exist (check data.train/validation/test)")
    rows = []
    for f in files:
        raw = f.read_bytes()
        if b"\x00" in raw:
            raise DataError(f"data file {f} is binary (NUL bytes), not a text file; remove it")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DataError(
                f"data file {f} is not UTF-8 (byte {e.start}: {e.reason}); re-save it as UTF-8"
            ) from None
        if not text.strip():
            if p.is_file():
                raise DataError(f"data file {f} is empty (no text)")
            log.warning("data file %s is empty: skipped", f)  # the other files may hold text
            continue
        rows.append({"text": text.replace("\r\n", "\n"), "source": str(f)})
    if not rows:
        raise DataError(f"data folder {path}: every text file is empty ({files[0]}, ...)")
    return pd.DataFrame(rows)


IMAGE_FORMATS = ("npz", "images")


def looks_like_images(data: Any) -> bool:
    """Image data: an image column, an image format, an .npz file or a plain folder."""
    if data.image_column is not None or data.format in IMAGE_FORMATS:
        return True
    if data.format != "auto" or data.train.startswith("hf://"):
        return False
    p = Path(data.train)
    if p.suffix.lower() == ".npz":
        return True
    hf_markers = ("dataset_dict.json", "dataset_info.json", "state.json")
    if not p.is_dir() or any((p / m).exists() for m in hf_markers):
        return False
    return not is_text_folder(p)


def require_columns(df: pd.DataFrame, source: str, fields: dict[str, str]) -> None:
    """Each column of `fields` (column -> the recipe field that names it) is present and
    has no empty cell; a DataError names the file, the column, the field and the rows."""
    for col, field in fields.items():
        if col not in df.columns:
            raise DataError(
                f"{source}: no column {col!r} (set {field}); columns are "
                f"{[str(c) for c in df.columns]}"
            )
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if empty.any():
            rows = (empty.to_numpy().nonzero()[0][:5] + 1).tolist()
            raise DataError(
                f"{source}: column {col!r} is empty in {int(empty.sum())} row(s) "
                f"(data rows {rows}, 1-based, header not counted); fill or drop them"
            )
