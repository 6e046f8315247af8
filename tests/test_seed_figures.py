"""The seed-figure arrays against the seed's printouts, NumPy and equation (1); the stage's PNGs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from stage_runner import run_stage

from fashion_cnn.figures import convolution, convolution_examples, plotting


@pytest.mark.parametrize("example", convolution_examples.PADDING_EXAMPLES, ids=lambda example: str(example))
def test_original_cells_mark_the_matrix_inside_each_padding_example(example) -> None:
    matrix, paddings, mode = example
    padded = convolution_examples.pad(matrix, paddings, mode)
    mask = convolution_examples.original_cells((len(matrix), len(matrix[0])), paddings)
    assert mask.shape == padded.shape and mask.sum() == len(matrix) * len(matrix[0])
    np.testing.assert_array_equal(padded[mask].reshape(len(matrix), -1), matrix)


def test_padding_matches_the_seed_printouts() -> None:
    square, wide = convolution_examples.SQUARE_MATRIX, convolution_examples.WIDE_MATRIX
    assert convolution_examples.pad(square, ((1, 2), (1, 3)), "CONSTANT").shape == (6, 7)
    assert convolution_examples.pad(square, ((2, 2), (2, 2)), "SYMMETRIC")[0].tolist() == [
        5,
        4,
        4,
        5,
        6,
        6,
        5,
    ]
    reflect = convolution_examples.pad(wide, ((2, 2), (2, 2)), "REFLECT")
    assert reflect.shape == (7, 8)
    assert reflect[0].tolist() == [9, 8, 7, 8, 9, 10, 9, 8]


def test_stride_example_of_the_seed() -> None:
    same = convolution_examples.stride_layout(13, 6, 5, "same")
    valid = convolution_examples.stride_layout(13, 6, 5, "valid")
    assert (same.output_size, same.pad_before, same.pad_after, same.ignored) == (3, 1, 2, 0)
    assert (valid.output_size, valid.pad_before, valid.pad_after, valid.ignored) == (2, 0, 0, 2)
    assert same.window_starts == (-1, 4, 9)
    assert valid.window_starts == (0, 5)


@pytest.mark.parametrize(("size", "kernel", "stride"), [(13, 6, 5), (28, 7, 1), (10, 3, 2), (7, 4, 3)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_stride_layout_output_size_equals_tensorflow(
    size: int, kernel: int, stride: int, padding: str
) -> None:
    layout = convolution_examples.stride_layout(size, kernel, stride, padding)
    signal = tf.ones((1, 1, size, 1))
    window = tf.ones((1, kernel, 1, 1))
    output = tf.nn.conv2d(signal, window, strides=stride, padding=padding.upper())
    assert layout.output_size == output.shape[2]
    # With zero padding, each window sums the ones it covers inside the input.
    expected_sums = [
        len(set(range(start, start + kernel)) & set(range(size))) for start in layout.window_starts
    ]
    assert output.numpy()[0, 0, :, 0].tolist() == expected_sums


def test_line_filters_are_the_seed_ones() -> None:
    filters = convolution_examples.line_filters(3)
    assert filters.shape == (7, 7, 3, 2)
    assert (filters[:, 3, :, 0] == 1).all() and filters[..., 0].sum() == 7 * 3
    assert (filters[3, :, :, 1] == 1).all() and filters[..., 1].sum() == 7 * 3


def equation_one(images: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """z[i, j, k] = sum over u, v, k' of x[i + u, j + v, k'] * w[u, v, k', k] (stride 1, zero padding)."""
    kernel = weights.shape[0]
    half = kernel // 2
    padded = np.pad(images, ((0, 0), (half, half), (half, half), (0, 0)))
    batch, height, width, _ = images.shape
    outputs = np.zeros((batch, height, width, weights.shape[-1]))
    for u in range(kernel):
        for v in range(kernel):
            window = padded[:, u : u + height, v : v + width, :]
            outputs += np.einsum("bhwc,ck->bhwk", window, weights[u, v])
    return outputs


def test_feature_maps_equal_equation_one() -> None:
    generator = np.random.default_rng(0)
    images = generator.random((2, 9, 11, 3), dtype=np.float32)
    line_maps = convolution_examples.convolve(images, convolution_examples.line_filters(3))
    np.testing.assert_allclose(
        line_maps, equation_one(images, convolution_examples.line_filters(3)), rtol=1e-5
    )
    random_weights = generator.normal(size=(7, 7, 3, 2)).astype(np.float32)
    np.testing.assert_allclose(
        convolution_examples.convolve(images, random_weights),
        equation_one(images, random_weights),
        rtol=1e-4,
        atol=1e-4,
    )


def test_sample_images_and_crop() -> None:
    images = convolution_examples.sample_images()
    assert images.shape == (2, 427, 640, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(convolution_examples.crop(images[0]), images[0, 150:220, 130:250])
    assert convolution_examples.crop(images[0, :, :, 0]).shape == (70, 120)


@pytest.mark.parametrize("shape", [(2, 70, 120, 3), (1, 7, 9, 2)])
def test_pooling_equals_numpy(shape: tuple[int, ...]) -> None:
    images = np.random.default_rng(1).random(shape, dtype=np.float32)
    batch, height, width, channels = shape
    # "valid" pooling drops the last row/column of an odd side.
    blocks = images[:, : height // 2 * 2, : width // 2 * 2].reshape(
        batch, height // 2, 2, width // 2, 2, channels
    )
    np.testing.assert_array_equal(convolution_examples.pool(images, "max"), blocks.max(axis=(2, 4)))
    np.testing.assert_allclose(
        convolution_examples.pool(images, "average"), blocks.mean(axis=(2, 4)), rtol=1e-6
    )


def test_pool_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="'median'"):
        convolution_examples.pool(np.zeros((1, 2, 2, 1), np.float32), "median")


def test_max_pooling_translation_invariance() -> None:
    images = convolution_examples.translation_images()
    assert images.shape == (3, 6, 10)
    np.testing.assert_array_equal(images[1, :, 1:], images[0, :, :-1])
    pooled = convolution_examples.pool(images[..., np.newaxis], "max")[..., 0]  # (3, 3, 5)
    np.testing.assert_array_equal(pooled[1], pooled[0])
    assert not np.array_equal(pooled[2], pooled[0])
    np.testing.assert_array_equal(pooled[2][:, 1:], pooled[0][:, :-1])


def test_small_figures_are_byte_stable(tmp_path: Path, png_check) -> None:
    for attempt in ("first", "second"):
        plotting.save_figure(convolution.padding_figure(), tmp_path / attempt / "padding.png")
        plotting.save_figure(convolution.stride_figure(13, 6, 5), tmp_path / attempt / "stride.png")
    for name in ("padding.png", "stride.png"):
        png_check(tmp_path / "first" / name)
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()


@pytest.mark.slow
def test_stage_writes_every_figure_logs_them_and_is_byte_stable(
    project: Path, tmp_path: Path, png_check
) -> None:
    result = run_stage("seed_figures", cwd=project)
    assert result.returncode == 0, result.stderr[-2000:]
    output_dir = project / "reports" / "figures" / "seed"
    expected = sorted(f"{name}.png" for name in convolution.FIGURE_NAMES)
    assert sorted(path.name for path in output_dir.iterdir()) == expected
    for path in output_dir.iterdir():
        png_check(path)

    rerendered = convolution.render_seed_figures(tmp_path / "again")
    for path in rerendered:
        assert path.read_bytes() == (output_dir / path.name).read_bytes(), f"{path.name} differs between runs"

    import mlflow

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("fashion-cnn-pipeline")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "seed_figures"
    logged = sorted(Path(item.path).name for item in client.list_artifacts(run.info.run_id, "figures/seed"))
    assert logged == expected
