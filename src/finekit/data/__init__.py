"""The data room: readers, splits and (later) augmentation; no task or model knowledge."""

from finekit.data.readers import detect_format, read_table
from finekit.data.splits import Splits, holdout, read_splits, sample_per_class

__all__ = ["Splits", "detect_format", "holdout", "read_splits", "read_table", "sample_per_class"]
