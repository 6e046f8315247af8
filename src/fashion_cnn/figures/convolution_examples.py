"""The seed notebook's convolution and pooling examples as arrays: padding, strides, filters, pooling.

Computed with TensorFlow's own ops (tf.pad, tf.nn.conv2d, Keras pooling) so the figures show exactly
what TensorFlow does; seed_figures draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_sample_image

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
