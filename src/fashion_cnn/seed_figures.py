"""Stage seed_figures: every figure of the seed notebook (padding, strides, filters, pooling) as PNG.

Plain functions compute the arrays (tested against tf.pad, NumPy and equation (1) of the seed);
the `*_figure` functions only draw them. Nothing here depends on the trained model.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Hide TensorFlow's C++ start-up chatter (CUDA probing on CPU machines); users may override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.datasets import load_sample_image  # noqa: E402

from fashion_cnn import paths, plotting, tracking  # noqa: E402
from fashion_cnn.config import ProjectConfig, hydra_overrides, stage_main  # noqa: E402

log = logging.getLogger(__name__)

SQUARE_MATRIX = ((1, 2, 3), (4, 5, 6), (7, 8, 9))
WIDE_MATRIX = ((1, 2, 3, 4), (4, 5, 6, 7), (7, 8, 9, 10))
# (matrix, paddings as [[rows before, rows after], [columns before, columns after]], tf.pad mode)
PADDING_EXAMPLES = (
    (SQUARE_MATRIX, ((2, 2), (2, 2)), "CONSTANT"),
    (SQUARE_MATRIX, ((1, 2), (1, 3)), "CONSTANT"),
    (SQUARE_MATRIX, ((2, 2), (2, 2)), "SYMMETRIC"),
    (WIDE_MATRIX, ((2, 2), (2, 2)), "REFLECT"),
)
# The seed's stride example: 13 inputs, a window of 6, stride 5.
STRIDE_EXAMPLE = {"input_size": 13, "kernel": 6, "stride": 5}
SAMPLE_IMAGES = ("china.jpg", "flower.jpg")
FILTER_NAMES = ("vertical line", "horizontal line")
MAP_VALUE_LABEL = "Sum of the 7 pixels x 3 channels under the line"
# The seed's crop of china.jpg: rows 150:220, columns 130:250 (a roof edge and a tree).
CROP_ROWS = slice(150, 220)
CROP_COLUMNS = slice(130, 250)
# A "T" (bar 1, stem 0.5) whose strokes start and end on even columns: shifted right by one pixel,
# every value stays in its 2x2 window, so max pooling gives the same output.
TRANSLATION_PATTERN = np.array(
    [[1, 1, 1, 1, 1]] + [[0, 0, 0.5, 0, 0]] * 5,
    dtype=np.float32,
)  # (6, 5)
TRANSLATION_SHIFTS = (0, 1, 2)

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


# ---- the arrays ----


def pad(matrix: tuple[tuple[int, ...], ...], paddings: tuple[tuple[int, int], ...], mode: str) -> np.ndarray:
    """tf.pad of an integer matrix, as the seed calls it."""
    return tf.pad(tf.constant(matrix, dtype=tf.int32), tf.constant(paddings), mode).numpy()


def original_cells(shape: tuple[int, int], paddings: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Boolean mask of the padded matrix: True where the original values sit."""
    (top, bottom), (left, right) = paddings
    mask = np.zeros((shape[0] + top + bottom, shape[1] + left + right), dtype=bool)
    mask[top : top + shape[0], left : left + shape[1]] = True
    return mask


@dataclass(frozen=True)
class StrideLayout:
    """Where each output neuron's window falls on a 1-D input, for one padding mode."""

    padding: str
    input_size: int
    kernel: int
    stride: int
    output_size: int
    pad_before: int
    pad_after: int
    window_starts: tuple[int, ...]  # input index of each window's first cell; negative = in the padding
    ignored: int  # trailing inputs that no window reaches


def stride_layout(input_size: int, kernel: int, stride: int, padding: str) -> StrideLayout:
    """Output size, zero padding and windows: "same" gives ceil(n / s), "valid" floor((n - f) / s) + 1."""
    if padding == "same":
        output_size = math.ceil(input_size / stride)
        total = max((output_size - 1) * stride + kernel - input_size, 0)
        # TensorFlow puts the odd zero after the input.
        before, after = total // 2, total - total // 2
    elif padding == "valid":
        output_size = (input_size - kernel) // stride + 1
        before = after = 0
    else:
        raise ValueError(f"padding = {padding!r}: allowed values are 'same' and 'valid'")
    starts = tuple(index * stride - before for index in range(output_size))
    ignored = max(input_size - (starts[-1] + kernel), 0)
    return StrideLayout(padding, input_size, kernel, stride, output_size, before, after, starts, ignored)


def sample_images() -> np.ndarray:
    """scikit-learn's china.jpg and flower.jpg scaled to 0..1: (2, 427, 640, 3) float32."""
    return np.stack([load_sample_image(name) for name in SAMPLE_IMAGES]).astype(np.float32) / 255


def line_filters(channels: int, size: int = 7) -> np.ndarray:
    """The seed's two filters, (size, size, channels, 2): a vertical and a horizontal line of ones."""
    filters = np.zeros((size, size, channels, 2), dtype=np.float32)
    filters[:, size // 2, :, 0] = 1
    filters[size // 2, :, :, 1] = 1
    return filters


def convolve(images: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """tf.nn.conv2d with stride 1 and "SAME" (zero) padding: (batch, height, width, filters)."""
    return tf.nn.conv2d(images, filters, strides=1, padding="SAME").numpy()


def crop(image: np.ndarray) -> np.ndarray:
    """The seed's crop of one (height, width, ...) image: rows 150:220, columns 130:250."""
    return image[CROP_ROWS, CROP_COLUMNS]


def pool(images: np.ndarray, kind: str, size: int = 2) -> np.ndarray:
    """Max or average pooling of (batch, height, width, channels), window and stride `size`, no padding."""
    pooling = {"max": tf.nn.max_pool2d, "average": tf.nn.avg_pool2d}
    if kind not in pooling:
        raise ValueError(f"pooling kind = {kind!r}: allowed values are 'max' and 'average'")
    return pooling[kind](images, ksize=size, strides=size, padding="VALID").numpy()


def translation_images(shifts: tuple[int, ...] = TRANSLATION_SHIFTS) -> np.ndarray:
    """The pattern placed at column 2 and shifted right by each of `shifts`: (len(shifts), 6, 10)."""
    rows, columns = TRANSLATION_PATTERN.shape
    images = np.zeros((len(shifts), rows, 10), dtype=np.float32)
    for index, shift in enumerate(shifts):
        images[index, :, 2 + shift : 2 + shift + columns] = TRANSLATION_PATTERN
    return images


# ---- the figures ----


def padding_figure() -> Figure:
    """The four tf.pad examples of the seed as annotated grids, original cells highlighted."""
    figure = plotting.new_figure(11.0, 9.5)
    figure.suptitle("tf.pad: the original matrix (blue) inside its padding")
    padded_all = [pad(matrix, paddings, mode) for matrix, paddings, mode in PADDING_EXAMPLES]
    frame_shape = tuple(max(padded.shape[axis] for padded in padded_all) for axis in (0, 1))
    panels = zip(figure.subplots(2, 2).flat, PADDING_EXAMPLES, padded_all, strict=True)
    for axes, (matrix, paddings, mode), padded in panels:
        mask = original_cells((len(matrix), len(matrix[0])), paddings)
        pairs = [list(pair) for pair in paddings]
        shapes = f"{len(matrix)}x{len(matrix[0])} -> {padded.shape[0]}x{padded.shape[1]}"
        title = f'"{mode}", paddings {pairs}\n{shapes}'
        plotting.draw_value_grid(axes, padded, mask, title=title, frame_shape=frame_shape)
    return figure


def _draw_stride_row(axes: Axes, layout: StrideLayout, x_limits: tuple[float, float]) -> None:
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

    layouts = [stride_layout(input_size, kernel, stride, padding) for padding in ("same", "valid")]
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
        plotting.draw_value_grid(axes, weights, weights == 1, title=f"{FILTER_NAMES[index].capitalize()}")
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
        title = f"{SAMPLE_IMAGES[image_index]}, {FILTER_NAMES[filter_index]} filter"
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
    for column, shift in enumerate(TRANSLATION_SHIFTS):
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
    yield "same_valid_stride", stride_figure(**STRIDE_EXAMPLE)
    images = sample_images()  # (2, 427, 640, 3)
    filters = line_filters(images.shape[-1])  # (7, 7, 3, 2)
    feature_maps = convolve(images, filters)  # (2, 427, 640, 2)
    yield "line_filters", line_filters_figure(filters)
    yield (
        "china_horizontal_feature_map",
        single_map_figure(feature_maps[0, :, :, 1], "china.jpg convolved with the horizontal-line filter"),
    )
    yield "feature_maps", feature_maps_figure(feature_maps)
    where = "rows 150:220, columns 130:250"
    yield "china_original", crop_figure(crop(images[0, :, :, 0]), f"china.jpg, red channel ({where})")
    for index, name in enumerate(("vertical", "horizontal")):
        title = f"{name.capitalize()}-line feature map ({where})"
        yield f"china_{name}", crop_figure(crop(feature_maps[0, :, :, index]), title)
    cropped = np.stack([crop(image) for image in images])  # (2, 70, 120, 3)
    for kind in ("max", "average"):
        title = f"{kind.capitalize()} pooling of the china.jpg crop: 2x2 window, stride 2"
        yield f"china_{kind}_pooling", pooling_figure(cropped[0], pool(cropped, kind)[0], title)
    shifted = translation_images()  # (3, 6, 10)
    pooled = pool(shifted[..., np.newaxis], "max")[..., 0]  # (3, 3, 5)
    yield "max_pooling_translation_invariance", translation_figure(shifted, pooled)


def render_seed_figures(output_dir: Path) -> list[Path]:
    """Write every seed figure as `<name>.png` in `output_dir`; return the paths written."""
    written = []
    for name, figure in seed_figures():
        path = output_dir / f"{name}.png"
        plotting.save_figure(figure, path)
        written.append(path)
    return written


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.seed_figures`."""
    output_dir = project.figures_dir / "seed"
    with tracking.stage_run(
        project,
        config,
        "seed_figures",
        "seed_figures",
        config.tracking.pipeline_experiment_name,
        hydra_overrides(),
    ):
        written = render_seed_figures(output_dir)
        for path in written:
            mlflow.log_artifact(str(path), artifact_path="figures/seed")
    log.info("wrote %d figures to %s", len(written), output_dir)


if __name__ == "__main__":
    main()
