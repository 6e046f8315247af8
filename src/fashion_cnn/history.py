"""reports/train/history.csv, the per-epoch training record: its columns, its writer and its reader.

`loss` and `val_loss` are plain cross-entropy, the same quantity evaluate reports as the test loss;
`objective` is what the optimizer minimised (with label smoothing, when on), on training batches.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from fashion_cnn.atomic import write_text_atomic
from fashion_cnn.errors import DataError

COLUMNS = ("epoch", "objective", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")
# What the training curves need; older files without `objective` still draw.
CURVE_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """The per-epoch rows as CSV (a DVC plot), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{row[key]:.6f}" if key != "epoch" else row[key]) for key in COLUMNS})
    write_text_atomic(path, buffer.getvalue())


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows of a history file as floats, checked for the columns the curves need."""
    if not path.is_file():
        raise DataError(f"{path}: missing (run `dvc repro train` first)")
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        missing = [column for column in CURVE_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing columns {missing} (has {reader.fieldnames})")
        try:
            rows = [{column: float(row[column]) for column in CURVE_COLUMNS} for row in reader]
        except (TypeError, ValueError) as error:
            raise DataError(f"{path}: line {reader.line_num}: not a number ({error})") from None
    if not rows:
        raise DataError(f"{path}: no epochs recorded")
    return rows
