"""The report room: one self-contained HTML page per run or compare directory."""

from __future__ import annotations

from pathlib import Path

from finekit.errors import RunDirError


def write_report(path: str | Path) -> Path:
    """Write report.html for a run directory or a compare directory; return its path."""
    p = Path(path)
    if (p / "compare.json").is_file():
        from finekit.report.compare import compare_report

        return compare_report(p)
    from finekit.rundir import is_run_dir

    if not is_run_dir(p):
        raise RunDirError(
            f"{p} is neither a finekit run directory (run.json) nor a compare "
            "directory (compare.json)"
        )
    from finekit.report.run import run_report

    return run_report(p)


__all__ = ["write_report"]
