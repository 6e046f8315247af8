"""Every figure of the seed notebook (padding, strides, filters, pooling), drawn for the seed_figures stage.

Plain functions compute the arrays (tested against tf.pad, NumPy and equation (1) of the seed);
the `*_figure` functions only draw them. Nothing here depends on the trained model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fashion_cnn.figures import convolution_examples, plotting

log = logging.getLogger(__name__)

MAP_VALUE_LABEL = "Sum of the 7 pixels x 3 channels under the line"

FIGURE_NAMES = (
    "padding",
    "same_valid_stride",
    "line_filters",
    "china_horizontal_feature_map",
    "feature_maps",
    "china_original",
    "china_vertical",
    "china_horizontal",
    "china_max_pooling",
    "china_average_pooling",
    "max_pooling_translation_invariance",
)


# ---- the figures ----


def padding_figure() -> Figure:
    """The four tf.pad examples of the seed as annotated grids, original cells highlighted."""
    figure = plotting.new_figure(11.0, 9.5)
    figure.suptitle("tf.pad: the original matrix (blue) inside its padding")
    padded_all = [
        convolution_examples.pad(matrix, paddings, mode)
        for matrix, paddings, mode in convolution_examples.PADDING_EXAMPLES
    ]
    frame_shape = tuple(max(padded.shape[axis] for padded in padded_all) for axis in (0, 1))
    panels = zip(figure.subplots(2, 2).flat, convolution_examples.PADDING_EXAMPLES, padded_all, strict=True)
    for axes, (matrix, paddings, mode), padded in panels:
        mask = convolution_examples.original_cells((len(matrix), len(matrix[0])), paddings)
        pairs = [list(pair) for pair in paddings]
        shapes = f"{len(matrix)}x{len(matrix[0])} -> {padded.shape[0]}x{padded.shape[1]}"
        title = f'"{mode}", paddings {pairs}\n{shapes}'
        plotting.draw_value_grid(axes, padded, mask, title=title, frame_shape=frame_shape)
    return figure


def _draw_stride_row(
    axes: Axes, layout: convolution_examples.StrideLayout, x_limits: tuple[float, float]
) -> None:
    """Input cells (padding grey, ignored red) with one colored bar per output neuron's window above."""
    from matplotlib import patches

    for position in range(-layout.pad_before, layout.input_size + layout.pad_after):
        if position < 0 or position >= layout.input_size:
            face, text = "#d9d9d9", "0"
        elif position >= layout.input_size - layout.ignored:
            face, text = "#fcbba1", f"{position + 1}"
        else:
            face, text = "white", f"{position + 1}"
        axes.add_patch(patches.Rectangle((position, 0), 1, 1, facecolor=face, edgecolor="#525252"))
        axes.text(position + 0.5, 0.5, text, ha="center", va="center", fontsize=10)
    for index, start in enumerate(layout.window_starts):
        color = f"C{index}"
        height = 1.35 + 0.7 * index
        axes.add_patch(patches.Rectangle((start, height), layout.kernel, 0.45, facecolor=color, alpha=0.8))
        axes.text(
            start + layout.kernel / 2, height + 0.22, f"output {index + 1}", ha="center", va="center",
            fontsize=10, color="white", weight="bold",
        )  # fmt: skip
    axes.set_xlim(*x_limits)
    axes.set_ylim(-0.2, 1.35 + 0.7 * layout.output_size)
    axes.set_aspect("equal")
    axes.axis("off")


def stride_figure(input_size: int, kernel: int, stride: int) -> Figure:
    """The seed's "same" vs "valid" picture: which inputs each output neuron sees, and the size rule."""
    from matplotlib import patches

    layouts = [
        convolution_examples.stride_layout(input_size, kernel, stride, padding)
        for padding in ("same", "valid")
    ]
    x_limits = (
        min(-layout.pad_before for layout in layouts) - 0.2,
        max(layout.input_size + layout.pad_after for layout in layouts) + 0.2,
    )
    figure = plotting.new_figure(11.0, 6.0)
    figure.suptitle(f'Input {input_size}, kernel {kernel}, stride {stride}: padding "same" vs "valid"')
    same, valid = layouts
    titles = (
        f'"same": ceil({input_size} / {stride}) = {same.output_size} outputs; '
        f"{same.pad_before + same.pad_after} zeros added ({same.pad_before} before, {same.pad_after} after)",
        f'"valid": floor(({input_size} - {kernel}) / {stride}) + 1 = {valid.output_size} outputs; '
        f"no padding, the last {valid.ignored} inputs are ignored",
    )
    rows = figure.subplots(2, 1)
    for axes, layout, title in zip(rows, layouts, titles, strict=True):
        _draw_stride_row(axes, layout, x_limits)
        axes.set_title(title, loc="left")
    legend = [
        patches.Patch(facecolor="white", edgecolor="#525252", label="input"),
        patches.Patch(facecolor="#d9d9d9", edgecolor="#525252", label="zero padding"),
        patches.Patch(facecolor="#fcbba1", edgecolor="#525252", label="ignored input"),
    ]
    # The "valid" row has room above its ignored inputs, right of the last window.
    rows[1].legend(handles=legend, loc="upper right")
    figure.supxlabel(
        'Rule: output size = ceil(n / s) with "same", floor((n - f) / s) + 1 with "valid" '
        "(n inputs, window f, stride s)"
    )
    return figure


def line_filters_figure(filters: np.ndarray) -> Figure:
    """The two hand-made 7x7 filters as annotated grids (the same on each color channel)."""
    figure = plotting.new_figure(9.0, 4.8)
    figure.suptitle("The seed's two 7x7 filters (identical on each RGB channel)")
    for axes, index in zip(figure.subplots(1, 2), range(filters.shape[-1]), strict=True):
        weights = filters[:, :, 0, index].astype(int)
        plotting.draw_value_grid(
            axes, weights, weights == 1, title=f"{convolution_examples.FILTER_NAMES[index].capitalize()}"
        )
    return figure


def single_map_figure(feature_map: np.ndarray, title: str) -> Figure:
    """One full-size feature map with a colorbar."""
    figure = plotting.new_figure(8.0, 5.6)
    drawn = plotting.show_image(figure.add_subplot(), feature_map, title)
    figure.colorbar(drawn, shrink=0.85, label=MAP_VALUE_LABEL)
    return figure


def feature_maps_figure(feature_maps: np.ndarray) -> Figure:
    """The seed's 2x2 grid: rows china/flower, columns vertical/horizontal filter, one shared scale."""
    figure = plotting.new_figure(12.0, 8.4)
    figure.suptitle('tf.nn.conv2d(images, filters, strides=1, padding="SAME"): the feature maps')
    value_range = (0.0, float(feature_maps.max()))
    grid = figure.subplots(2, 2)
    for (image_index, filter_index), axes in np.ndenumerate(grid):
        image_name = convolution_examples.SAMPLE_IMAGES[image_index]
        title = f"{image_name}, {convolution_examples.FILTER_NAMES[filter_index]} filter"
        drawn = plotting.show_image(
            axes, feature_maps[image_index, :, :, filter_index], title, value_range=value_range
        )
    figure.colorbar(drawn, ax=grid, shrink=0.7, label=MAP_VALUE_LABEL)
    return figure


def crop_figure(image: np.ndarray, title: str) -> Figure:
    """One cropped (70, 120) map in gray, as the seed saves china_original/vertical/horizontal."""
    figure = plotting.new_figure(6.4, 4.3)
    plotting.show_image(figure.add_subplot(), image, title)
    return figure


def pooling_figure(image: np.ndarray, pooled: np.ndarray, title: str) -> Figure:
    """Input and pooled output side by side, at the same pixel scale (the output is half as wide)."""
    figure = plotting.new_figure(12.0, 4.8)
    figure.suptitle(title)
    input_axes, output_axes = figure.subplots(1, 2, width_ratios=[2, 1])
    plotting.show_image(input_axes, image, f"Input: {image.shape[0]}x{image.shape[1]}x{image.shape[2]}")
    plotting.show_image(output_axes, pooled, f"Output: {pooled.shape[0]}x{pooled.shape[1]}x{pooled.shape[2]}")
    return figure


def _cell_grid(axes: Axes, shape: tuple[int, ...], window: int | None) -> None:
    """Thin lines between pixels and, with `window`, thick red lines around the pooling windows."""
    rows, columns = shape
    axes.set_xticks(np.arange(-0.5, columns + 0.5, 1), minor=True)
    axes.set_yticks(np.arange(-0.5, rows + 0.5, 1), minor=True)
    axes.grid(which="minor", color="#969696", linewidth=0.6)
    axes.tick_params(which="both", length=0)
    if window is None:
        return
    for offset in range(0, columns + 1, window):
        axes.axvline(offset - 0.5, color="tab:red", linewidth=2)
    for offset in range(0, rows + 1, window):
        axes.axhline(offset - 0.5, color="tab:red", linewidth=2)


def translation_figure(images: np.ndarray, pooled: np.ndarray) -> Figure:
    """Three shifted images over their 2x2 max-pooled outputs: A and B pool the same, C shifts by one."""
    figure = plotting.new_figure(12.0, 6.4)
    figure.suptitle("Max pooling (2x2, stride 2) is invariant to small shifts")
    grid = figure.subplots(2, len(images), height_ratios=[1, 1])
    letters = "ABC"
    for column, shift in enumerate(convolution_examples.TRANSLATION_SHIFTS):
        name = letters[column]
        input_title = (
            f"{name}: shifted right by {shift} pixel{'s' * (shift != 1)}" if shift else "A: not shifted"
        )
        plotting.show_image(grid[0, column], images[column], input_title, cmap="Greys", value_range=(0, 1))
        _cell_grid(grid[0, column], images[column].shape, window=2)
        if column == 0:
            output_title = "max_pool(A)"
        elif np.array_equal(pooled[column], pooled[0]):
            output_title = f"max_pool({name}) = max_pool(A)"
        else:
            output_title = f"max_pool({name}): shifted one cell right"
        plotting.show_image(grid[1, column], pooled[column], output_title, cmap="Greys", value_range=(0, 1))
        _cell_grid(grid[1, column], pooled[column].shape, window=None)
    figure.supxlabel(
        "Red lines: the 2x2 pooling windows; each output cell is the largest value of its window.\n"
        "Black cells hold 1, grey cells 0.5, white cells 0."
    )
    return figure


def seed_figures() -> Iterator[tuple[str, Figure]]:
    """Compute the seed's arrays and yield (file stem, figure) in FIGURE_NAMES order."""
    yield "padding", padding_figure()
    yield "same_valid_stride", stride_figure(**convolution_examples.STRIDE_EXAMPLE)
    images = convolution_examples.sample_images()  # (2, 427, 640, 3)
    filters = convolution_examples.line_filters(images.shape[-1])  # (7, 7, 3, 2)
    feature_maps = convolution_examples.convolve(images, filters)  # (2, 427, 640, 2)
    yield "line_filters", line_filters_figure(filters)
    yield (
        "china_horizontal_feature_map",
        single_map_figure(feature_maps[0, :, :, 1], "china.jpg convolved with the horizontal-line filter"),
    )
    yield "feature_maps", feature_maps_figure(feature_maps)
    where = "rows 150:220, columns 130:250"
    yield (
        "china_original",
        crop_figure(convolution_examples.crop(images[0, :, :, 0]), f"china.jpg, red channel ({where})"),
    )
    for index, name in enumerate(("vertical", "horizontal")):
        title = f"{name.capitalize()}-line feature map ({where})"
        yield f"china_{name}", crop_figure(convolution_examples.crop(feature_maps[0, :, :, index]), title)
    cropped = np.stack([convolution_examples.crop(image) for image in images])  # (2, 70, 120, 3)
    for kind in ("max", "average"):
        title = f"{kind.capitalize()} pooling of the china.jpg crop: 2x2 window, stride 2"
        yield (
            f"china_{kind}_pooling",
            pooling_figure(cropped[0], convolution_examples.pool(cropped, kind)[0], title),
        )
    shifted = convolution_examples.translation_images()  # (3, 6, 10)
    pooled = convolution_examples.pool(shifted[..., np.newaxis], "max")[..., 0]  # (3, 3, 5)
    yield "max_pooling_translation_invariance", translation_figure(shifted, pooled)


def render_seed_figures(output_dir: Path) -> list[Path]:
    """Write every seed figure as `<name>.png` in `output_dir`; return the paths written."""
    return plotting.save_figures(seed_figures(), output_dir)
