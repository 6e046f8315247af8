"""Shared figure style and helpers: byte-stable PNG writing, image panels, confusion matrix, curves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

# A file-only backend: stages run headless, and Agg output is the same on every machine.
matplotlib.use("Agg")

import numpy as np
from matplotlib import patches, pyplot
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator

from fashion_cnn.utils.atomic import atomic_path

# Pixels per inch of every saved PNG.
DPI = 150
# Matplotlib stamps its version into PNGs by default; without it the bytes depend only on the pixels.
PNG_METADATA = {"Software": None}
# DejaVu Sans ships with matplotlib, so text renders the same everywhere.
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 14,
    "figure.titleweight": "bold",
    "image.interpolation": "nearest",
    "axes.grid": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
matplotlib.rcParams.update(STYLE)

HISTORY_CURVES = (("loss", "val_loss", "Loss (cross-entropy)"), ("accuracy", "val_accuracy", "Accuracy"))


def new_figure(width: float, height: float) -> Figure:
    """A figure of `width` x `height` inches whose layout keeps titles and labels inside the canvas."""
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Figure, path: Path) -> None:
    """Write `figure` as a PNG atomically, at a fixed dpi and with no version stamp, then close it."""
    with atomic_path(path) as temp_path:
        # A tight bounding box grows the canvas to any label the layout engine left outside it.
        figure.savefig(
            temp_path, format="png", dpi=DPI, metadata=PNG_METADATA, bbox_inches="tight", pad_inches=0.15
        )
    # Frees figures created through pyplot; a no-op for figures made with new_figure.
    pyplot.close(figure)


def show_image(
    axes: Axes,
    image: np.ndarray,
    title: str | None = None,
    cmap: str | None = "gray",
    value_range: tuple[float, float] | None = None,
) -> AxesImage:
    """Draw a grayscale (height, width) or RGB (height, width, 3) array without axes, under `title`."""
    vmin, vmax = value_range if value_range else (None, None)
    drawn = axes.imshow(image, cmap=cmap if np.ndim(image) == 2 else None, vmin=vmin, vmax=vmax)
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)
    if title:
        axes.set_title(title)
    return drawn


def show_mosaic(
    axes: Axes,
    tiles: np.ndarray,
    cmap: str = "gray",
    value_range: tuple[float, float] | None = None,
    separator_color: str = "white",
) -> AxesImage:
    """Draw (rows, columns, height, width) tiles as one image, each tile a unit square, lines between.

    One image instead of one axes per tile keeps large grids fast to draw; tile (row, column)
    spans [column, column + 1] x [row, row + 1] in data coordinates, for ticks and labels.
    """
    rows, columns, height, width = tiles.shape
    mosaic = tiles.transpose(0, 2, 1, 3).reshape(rows * height, columns * width)
    vmin, vmax = value_range if value_range else (None, None)
    drawn = axes.imshow(mosaic, cmap=cmap, vmin=vmin, vmax=vmax, extent=(0, columns, rows, 0))
    for column in range(1, columns):
        axes.axvline(column, color=separator_color, linewidth=2)
    for row in range(1, rows):
        axes.axhline(row, color=separator_color, linewidth=2)
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)
    return drawn


def draw_value_grid(
    axes: Axes,
    values: np.ndarray,
    highlight: np.ndarray | None = None,
    title: str | None = None,
    frame_shape: tuple[int, int] | None = None,
) -> None:
    """Draw a small integer matrix as a grid of annotated cells; `highlight` (bool mask) cells in color.

    `frame_shape` (rows, columns), at least the matrix's, centers it in a larger frame so that
    grids of different sizes drawn side by side get cells of the same size.
    """
    rows, columns = values.shape
    highlight = np.zeros(values.shape, dtype=bool) if highlight is None else highlight
    for (row, column), value in np.ndenumerate(values):
        face = "#9ecae1" if highlight[row, column] else "#f0f0f0"
        axes.add_patch(
            patches.Rectangle((column, row), 1, 1, facecolor=face, edgecolor="#525252", linewidth=1.0)
        )
        weight = "bold" if highlight[row, column] else "normal"
        axes.text(column + 0.5, row + 0.5, f"{value}", ha="center", va="center", fontsize=12, weight=weight)
    frame_rows, frame_columns = frame_shape or values.shape
    axes.set_xlim(-(frame_columns - columns) / 2, columns + (frame_columns - columns) / 2)
    axes.set_ylim(rows + (frame_rows - rows) / 2, -(frame_rows - rows) / 2)
    axes.set_aspect("equal")
    axes.axis("off")
    if title:
        axes.set_title(title)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix"
) -> Figure:
    """Counts (rows: true class, columns: predicted class) as an annotated heat map with a colorbar."""
    matrix = np.asarray(matrix)
    count = len(class_names)
    if matrix.shape != (count, count):
        raise ValueError(
            f"confusion matrix has shape {matrix.shape}, expected ({count}, {count}) for {count} class names"
        )
    figure = new_figure(9.0, 8.0)
    axes = figure.add_subplot()
    drawn = axes.imshow(matrix, cmap="Blues", vmin=0)
    integral = np.issubdtype(matrix.dtype, np.integer) or np.all(np.mod(matrix, 1) == 0)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), value in np.ndenumerate(matrix):
        text = f"{int(value):,}" if integral else f"{value:.2f}"
        color = "white" if value > threshold else "black"
        axes.text(column, row, text, ha="center", va="center", fontsize=9, color=color)
    axes.set_xticks(range(count), class_names, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(count), class_names)
    axes.set_xlabel("Predicted label")
    axes.set_ylabel("True label")
    axes.set_title(title)
    figure.colorbar(drawn, ax=axes, shrink=0.8, label="Images" if integral else "Fraction")
    return figure


def plot_training_curves(history_rows: Sequence[Mapping[str, float | str]]) -> Figure:
    """Loss and accuracy per epoch, train vs validation, from history.csv rows (epoch, loss, ...)."""
    if not history_rows:
        raise ValueError("training history is empty: need at least one epoch row")
    needed = ["epoch"] + [
        key for train_key, validation_key, _ in HISTORY_CURVES for key in (train_key, validation_key)
    ]
    missing = [key for key in needed if key not in history_rows[0]]
    if missing:
        raise ValueError(f"training history lacks columns {missing} (has {sorted(history_rows[0])})")
    epochs = [int(float(row["epoch"])) for row in history_rows]
    figure = new_figure(11.0, 4.2)
    figure.suptitle("Training curves")
    for axes, (train_key, validation_key, title) in zip(figure.subplots(1, 2), HISTORY_CURVES, strict=True):
        for key, label, style in ((train_key, "train", "o-"), (validation_key, "validation", "s--")):
            axes.plot(epochs, [float(row[key]) for row in history_rows], style, label=label, markersize=4)
        axes.set_title(title)
        axes.set_xlabel("Epoch")
        axes.set_ylabel(title.split(" (")[0])
        # Whole epochs only: every epoch when there are few, else a readable subset.
        if len(epochs) <= 20:
            axes.set_xticks(epochs)
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        axes.grid(True, alpha=0.3)
        axes.legend()
    return figure


def save_figures(named_figures: Iterable[tuple[str, Figure]], output_dir: Path) -> list[Path]:
    """Save each (name, figure) as `<output_dir>/<name>.png`; return the paths written."""
    written = []
    for name, figure in named_figures:
        path = output_dir / f"{name}.png"
        save_figure(figure, path)
        written.append(path)
    return written
