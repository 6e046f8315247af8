"""reports/train/history.csv, the per-epoch training record: its columns, its writer and its reader.

`loss` and `val_loss` are plain cross-entropy, the same quantity evaluate reports as the test loss;
`objective` is what the optimizer minimised (with label smoothing, when on), on training batches.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from fashion_cnn.errors import DataError
from fashion_cnn.utils import records
from fashion_cnn.utils.atomic import write_text_atomic

COLUMNS = ("epoch", "objective", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")
# What the training curves need; older files without `objective` still draw.
CURVE_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """The per-epoch rows as CSV (a DVC plot), atomically."""
    formatted = [
        {key: (f"{row[key]:.6f}" if key != "epoch" else row[key]) for key in COLUMNS} for row in rows
    ]
    write_text_atomic(path, records.csv_text(formatted, COLUMNS))


# history.csv is not in DVC's cache (a plot with cache: false): only training writes it again.
REBUILD = "rebuild it with `dvc repro train` (it trains again)"
# The columns that hold a fraction of the images.
FRACTION_COLUMNS = ("accuracy", "val_accuracy")


def read_history(path: Path, columns: Sequence[str] = CURVE_COLUMNS) -> list[dict[str, float]]:
    """The rows of a history file as floats, checked for `columns` (by default those the curves need)
    and for damage: a last line cut short, a value that is not a number, epochs that do not count 1, 2, ..."""
    text = records.read_text(path, REBUILD)
    if not text.endswith("\n"):
        # write_history ends every line with a newline: a file without one was cut short.
        raise DataError(f"{path}: truncated: its last line is incomplete; {REBUILD}")
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in columns if column not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (has {reader.fieldnames}); {REBUILD}")
    try:
        rows = [{column: float(row[column]) for column in columns} for row in reader]
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: line {reader.line_num}: not a number ({error}); {REBUILD}") from None
    if not rows:
        raise DataError(f"{path}: no epochs recorded; {REBUILD}")
    for line, row in enumerate(rows, start=2):
        problem = _row_problem(row, expected_epoch=line - 1)
        if problem:
            raise DataError(f"{path}: line {line}: {problem}; {REBUILD}")
    return rows


def _row_problem(row: dict[str, float], expected_epoch: int) -> str:
    """What is impossible in one row of a history, or ''."""
    if row["epoch"] != expected_epoch:
        return f"epoch {row['epoch']:g} where epoch {expected_epoch} belongs (rows lost or mixed up)"
    for column, value in row.items():
        if not math.isfinite(value) or value < 0 or (column in FRACTION_COLUMNS and value > 1):
            allowed = "0..1" if column in FRACTION_COLUMNS else "a finite number >= 0"
            return f"{column} = {value:g} is not {allowed}"
    return ""
