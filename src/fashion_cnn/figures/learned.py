"""What the trained model learned (filters, feature maps, curves, mistakes), drawn for model_figures.

It draws from arrays: what evaluate computed with the model (fashion_cnn.evaluation.model_outputs), the test
split and the training history; no model is loaded here. Images are shown standardized, as the
model sees them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fashion_cnn import CLASS_NAMES
from fashion_cnn.data.splits import Split
from fashion_cnn.errors import DataError
from fashion_cnn.evaluation.model_outputs import ModelOutputs
from fashion_cnn.figures import plotting

# Feature maps drawn per conv layer and image, and misclassified images drawn (rows x columns).
FEATURE_MAPS_SHOWN = 8
MISCLASSIFIED_GRID = (4, 6)


def filters_figure(layer_name: str, kernel: np.ndarray) -> Figure:
    """The first conv layer's kernels on one diverging scale (averaged over input channels if several).

    `kernel` is (height, width, input channels, filters), as Keras stores it."""
    weights = kernel.mean(axis=2).transpose(2, 0, 1)  # (filters, height, width)
    count, height, width = weights.shape
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    tiles = np.full((rows * columns, height, width), np.nan, dtype=np.float32)
    tiles[:count] = weights
    limit = float(np.abs(weights).max()) or 1.0
    figure = plotting.new_figure(0.8 * columns + 2.6, 0.8 * rows + 1.0)
    channels = "" if kernel.shape[2] == 1 else f", mean over {kernel.shape[2]} input channels"
    figure.suptitle(f"Learned filters of {layer_name}: {count} kernels {height}x{width}{channels}")
    axes = figure.add_subplot()
    drawn = plotting.show_mosaic(
        axes,
        tiles.reshape(rows, columns, height, width),
        cmap="RdBu_r",
        value_range=(-limit, limit),
        separator_color="#404040",
    )
    first_in_row = [row * columns + 1 for row in range(rows)]
    row_labels = [f"filters {first}-{min(first + columns - 1, count)}" for first in first_in_row]
    axes.set_yticks(np.arange(rows) + 0.5, row_labels)
    axes.tick_params(length=0, labelsize=9)
    figure.colorbar(drawn, ax=axes, shrink=0.8, label="Weight")
    return figure


def _scaled(tiles: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """Tiles rescaled to 0..1 over `axis` (min to max), so each group uses the whole gray range."""
    low = tiles.min(axis=axis, keepdims=True)
    span = tiles.max(axis=axis, keepdims=True) - low
    return (tiles - low) / np.where(span > 0, span, 1.0)


def feature_maps_figure(layer_name: str, images: np.ndarray, labels: np.ndarray, maps: np.ndarray) -> Figure:
    """Rows: one test image per class; left the image, right the layer's most active feature maps."""
    shown = min(FEATURE_MAPS_SHOWN, maps.shape[-1])
    # The maps with the largest mean activation over these images: many maps stay dark (dead ReLUs).
    chosen = np.argsort(-maps.mean(axis=(0, 1, 2)), kind="stable")[:shown]
    count = len(images)
    figure = plotting.new_figure(1.05 * (shown + 1) + 1.9, 1.05 * count + 1.1)
    figure.suptitle(
        f"{layer_name}: the {shown} most active of its {maps.shape[-1]} feature maps "
        f"({maps.shape[1]}x{maps.shape[2]}), one test image per class"
    )
    input_axes, maps_axes = figure.subplots(1, 2, width_ratios=[1, shown])
    plotting.show_mosaic(input_axes, _scaled(images[:, np.newaxis, :, :, 0], axis=(2, 3)))
    input_axes.set_yticks(np.arange(count) + 0.5, [CLASS_NAMES[label] for label in labels])
    input_axes.tick_params(length=0)
    input_axes.set_title("Input")
    map_tiles = maps[..., chosen].transpose(0, 3, 1, 2)  # (count, shown, height, width)
    # One scale per row (image): dark maps are ones this image hardly activates.
    row_maximum = map_tiles.max(axis=(1, 2, 3), keepdims=True)
    plotting.show_mosaic(
        maps_axes, map_tiles / np.where(row_maximum > 0, row_maximum, 1.0), value_range=(0, 1)
    )
    maps_axes.set_xticks(np.arange(shown) + 0.5, [f"map {index + 1}" for index in chosen])
    maps_axes.xaxis.tick_top()
    maps_axes.tick_params(length=0)
    maps_axes.set_title("Feature maps (each row scaled to its largest value; black = 0)")
    return figure


def misclassified_figure(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> Figure:
    """The first misclassified test images with their true and predicted class (and its probability)."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    rows, columns = MISCLASSIFIED_GRID
    figure = plotting.new_figure(2.0 * columns, 2.25 * rows + 0.6)
    figure.suptitle(
        f"Misclassified test images: {len(wrong):,} of {len(labels):,} ({len(wrong) / len(labels):.1%}); "
        f"the first {min(len(wrong), rows * columns)} shown"
    )
    for position, axes in enumerate(figure.subplots(rows, columns).flat):
        if position >= len(wrong):
            axes.axis("off")
            continue
        index = wrong[position]
        plotting.show_image(axes, images[index, :, :, 0])
        confidence = probabilities[index, predicted[index]]
        true_name, predicted_name = CLASS_NAMES[labels[index]], CLASS_NAMES[predicted[index]]
        axes.set_title(f"true: {true_name}\npredicted: {predicted_name} ({confidence:.0%})", fontsize=9)
    return figure


def model_figures(
    outputs: ModelOutputs, test: Split, history_rows: list[dict[str, Any]]
) -> Iterator[tuple[str, Figure]]:
    """Yield (file stem, figure): filters, feature maps per conv layer, training curves, mistakes."""
    if not outputs.conv_names:
        raise DataError("the model has no Conv2D layer: nothing to draw filters or feature maps of")
    yield "first_conv_filters", filters_figure(outputs.conv_names[0], outputs.first_conv_kernel)
    images, labels = test.images[outputs.class_indices], test.labels[outputs.class_indices]
    for name, maps in zip(outputs.conv_names, outputs.feature_maps, strict=True):
        yield f"feature_maps_{name}", feature_maps_figure(name, images, labels, maps)
    yield "training_curves", plotting.plot_training_curves(history_rows)
    yield "misclassified", misclassified_figure(test.images, test.labels, outputs.probabilities)


def render_model_figures(
    outputs: ModelOutputs, test: Split, history_rows: list[dict[str, Any]], output_dir: Path
) -> list[Path]:
    """Write every model figure as `<name>.png` in `output_dir`; return the paths written."""
    return plotting.save_figures(model_figures(outputs, test, history_rows), output_dir)
