"""The prepare stage on small synthetic data: split, standardization, dtypes, and rejected inputs."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from fashion_cnn.data import splits
from fashion_cnn.data.idx import encode_idx
from fashion_cnn.errors import DataError
from fashion_cnn.stages import prepare

if TYPE_CHECKING:
    from conftest import SyntheticRaw

# synthetic_raw has 120 training images; the last VALIDATION_SIZE of them validate.
VALIDATION_SIZE = 20


def reference_standardize(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Standardize `images` by the per-pixel statistics of `reference`, in float64, apart from prepare."""
    mean = reference.astype(np.float64).mean(axis=0)
    std = reference.astype(np.float64).std(axis=0) + 1e-7
    return ((images - mean) / std)[..., np.newaxis]


def run_prepare(raw: SyntheticRaw, prepared_dir: Path, make_config, *overrides: str) -> dict[str, int]:
    """Run the real prepare step with the repo's params plus overrides."""
    data_config = make_config(f"data.validation_size={VALIDATION_SIZE}", *overrides).data
    return prepare.prepare(raw.directory, prepared_dir, data_config)


def test_split_sizes_dtypes_shapes_and_labels(synthetic_raw, make_config, tmp_path: Path) -> None:
    prepared_dir = tmp_path / "prepared"
    sizes = run_prepare(synthetic_raw, prepared_dir, make_config)
    assert sizes == {"train": 100, "validation": 20, "test": 30}
    assert sorted(path.name for path in prepared_dir.iterdir()) == [
        "standardization.npz",
        "test.npz",
        "train.npz",
        "validation.npz",
    ]
    expected_labels = {
        "train": synthetic_raw.labels["train"][:100],
        "validation": synthetic_raw.labels["train"][100:],
        "test": synthetic_raw.labels["t10k"],
    }
    for name, labels in expected_labels.items():
        split = splits.load_split(prepared_dir, name)
        assert split.images.dtype == np.float32
        assert split.images.shape == (len(labels), 28, 28, 1)
        np.testing.assert_array_equal(split.labels, labels)


def test_every_split_is_standardized_with_training_split_statistics(
    synthetic_raw, make_config, tmp_path: Path
) -> None:
    prepared_dir = tmp_path / "prepared"
    run_prepare(synthetic_raw, prepared_dir, make_config)
    train_raw = synthetic_raw.images["train"][:100]
    mean, std = splits.load_standardization(prepared_dir)
    assert mean.shape == std.shape == (1, 28, 28)
    np.testing.assert_allclose(mean[0], train_raw.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std[0], train_raw.std(axis=0) + 1e-7, rtol=1e-5)
    # Pixel (0, 0) is black in every image: its std is the epsilon alone.
    assert std[0, 0, 0] == pytest.approx(1e-7, rel=1e-3)
    sources = {
        "train": train_raw,
        "validation": synthetic_raw.images["train"][100:],
        "test": synthetic_raw.images["t10k"],
    }
    for name, raw_images in sources.items():
        images = splits.load_split(prepared_dir, name).images
        np.testing.assert_allclose(images, reference_standardize(raw_images, train_raw), rtol=1e-4, atol=1e-4)
    # The training split comes out centred and scaled (black pixel aside).
    train = splits.load_split(prepared_dir, "train").images[..., 0]
    assert np.abs(train.mean(axis=0)).max() < 1e-4
    np.testing.assert_allclose(train.std(axis=0)[1:, 1:], 1.0, rtol=1e-4)


def test_each_split_keeps_its_original_pixels_for_the_saved_model(
    synthetic_raw, make_config, tmp_path: Path
) -> None:
    prepared_dir = tmp_path / "prepared"
    run_prepare(synthetic_raw, prepared_dir, make_config)
    sources = {
        "train": synthetic_raw.images["train"][:100],
        "validation": synthetic_raw.images["train"][100:],
        "test": synthetic_raw.images["t10k"],
    }
    mean, std = splits.load_standardization(prepared_dir)
    for name, raw_images in sources.items():
        pixels = splits.load_pixels(prepared_dir, name)
        assert pixels.images.dtype == np.float32 and pixels.images.shape == (*raw_images.shape, 1)
        np.testing.assert_array_equal(pixels.images[..., 0], raw_images)
        np.testing.assert_array_equal(pixels.labels, splits.load_split(prepared_dir, name).labels)
        # The standardized images are these pixels with the training statistics applied.
        standardized = splits.load_split(prepared_dir, name).images[..., 0]
        np.testing.assert_allclose(standardized, (pixels.images[..., 0] - mean) / std, rtol=1e-6, atol=1e-6)


def test_pixels_of_another_type_are_refused_with_the_file_named(tmp_path: Path) -> None:
    splits.save_npz(
        tmp_path / "test.npz",
        images=np.zeros((3, 28, 28, 1), np.float32),
        labels=np.zeros(3, np.uint8),
        pixels=np.zeros((3, 28, 28), np.float32),
    )
    with pytest.raises(
        DataError, match=r"test\.npz: pixels must be uint8 of shape \(count, 28, 28\), got float32"
    ):
        splits.load_pixels(tmp_path, "test")


def test_max_images_shrink_train_and_test_but_not_validation(
    synthetic_raw, make_config, tmp_path: Path
) -> None:
    prepared_dir = tmp_path / "prepared"
    sizes = run_prepare(
        synthetic_raw, prepared_dir, make_config, "data.max_train_images=40", "data.max_test_images=7"
    )
    assert sizes == {"train": 40, "validation": 20, "test": 7}
    np.testing.assert_array_equal(
        splits.load_split(prepared_dir, "train").labels, synthetic_raw.labels["train"][:40]
    )
    np.testing.assert_array_equal(
        splits.load_split(prepared_dir, "validation").labels, synthetic_raw.labels["train"][100:]
    )
    np.testing.assert_array_equal(
        splits.load_split(prepared_dir, "test").labels, synthetic_raw.labels["t10k"][:7]
    )
    mean, _ = splits.load_standardization(prepared_dir)
    np.testing.assert_allclose(mean[0], synthetic_raw.images["train"][:40].mean(axis=0), rtol=1e-6)


def write_gz(path: Path, payload: bytes) -> None:
    path.write_bytes(gzip.compress(payload, mtime=0))


def wrong_magic(raw: SyntheticRaw) -> None:
    payload = bytearray(encode_idx(raw.images["train"]))
    payload[3] = 0x0D
    write_gz(raw.path("train-images-idx3-ubyte"), bytes(payload))


def count_mismatch(raw: SyntheticRaw) -> None:
    write_gz(raw.path("train-labels-idx1-ubyte"), encode_idx(raw.labels["train"][:-1]))


def label_out_of_range(raw: SyntheticRaw) -> None:
    labels = raw.labels["t10k"].copy()
    labels[5] = 10
    write_gz(raw.path("t10k-labels-idx1-ubyte"), encode_idx(labels))


def truncated_gzip(raw: SyntheticRaw) -> None:
    path = raw.path("t10k-images-idx3-ubyte")
    path.write_bytes(path.read_bytes()[:-100])


def header_longer_than_file(raw: SyntheticRaw) -> None:
    write_gz(raw.path("train-images-idx3-ubyte"), encode_idx(raw.images["train"])[:-28])


def not_28_by_28(raw: SyntheticRaw) -> None:
    write_gz(raw.path("t10k-images-idx3-ubyte"), encode_idx(raw.images["t10k"][:, :27, :]))


@pytest.mark.parametrize(
    ("corrupt", "named_file", "reason"),
    [
        (wrong_magic, "train-images-idx3-ubyte.gz", "wrong IDX magic number 0x0000080d"),
        (count_mismatch, "train-labels-idx1-ubyte.gz", "119 labels"),
        (label_out_of_range, "t10k-labels-idx1-ubyte.gz", "label 10 at index 5 is outside 0..9"),
        (truncated_gzip, "t10k-images-idx3-ubyte.gz", "truncated gzip"),
        (header_longer_than_file, "train-images-idx3-ubyte.gz", "header says shape (120, 28, 28)"),
        (not_28_by_28, "t10k-images-idx3-ubyte.gz", "(30, 27, 28)"),
    ],
)
def test_bad_raw_data_is_rejected_naming_the_file(
    synthetic_raw, make_config, tmp_path: Path, corrupt, named_file: str, reason: str
) -> None:
    corrupt(synthetic_raw)
    prepared_dir = tmp_path / "prepared"
    with pytest.raises(DataError) as raised:
        run_prepare(synthetic_raw, prepared_dir, make_config)
    assert named_file in str(raised.value)
    assert reason in str(raised.value)
    # Checked before anything is written.
    assert not prepared_dir.exists()


# ---- data.load_split guards train, evaluate and figures against hand-edited arrays ----


def valid_arrays(count: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "images": rng.standard_normal((count, 28, 28, 1)).astype(np.float32),
        "labels": rng.integers(0, 10, size=count).astype(np.uint8),
    }


def with_nan(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays["images"][2, 3, 4, 0] = np.nan
    return arrays


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda arrays: {**arrays, "images": arrays["images"].astype(np.float64)}, "float64"),
        (lambda arrays: {**arrays, "images": arrays["images"][..., 0]}, "(6, 28, 28)"),
        (lambda arrays: {**arrays, "images": arrays["images"][:, :27]}, "(6, 27, 28, 1)"),
        (with_nan, "NaN"),
        (lambda arrays: {**arrays, "labels": arrays["labels"][:-1]}, "(5,) labels for 6 images"),
        (lambda arrays: {**arrays, "labels": np.full(6, 10, dtype=np.uint8)}, "labels outside 0..9"),
        (lambda arrays: {"images": arrays["images"]}, "missing arrays ['labels']"),
    ],
    ids=["float64", "no-channel-axis", "27-rows", "nan", "label-count", "label-range", "no-labels-array"],
)
def test_load_split_rejects_hand_edited_arrays(tmp_path: Path, edit, reason: str) -> None:
    splits.save_npz(tmp_path / "train.npz", **edit(valid_arrays()))
    with pytest.raises(DataError) as raised:
        splits.load_split(tmp_path, "train")
    assert str(tmp_path / "train.npz") in str(raised.value)
    assert reason in str(raised.value)


def test_load_split_accepts_valid_arrays_and_names_a_missing_file(tmp_path: Path) -> None:
    arrays = valid_arrays()
    splits.save_npz(tmp_path / "test.npz", **arrays)
    split = splits.load_split(tmp_path, "test")
    np.testing.assert_array_equal(split.images, arrays["images"])
    with pytest.raises(DataError, match=r"validation\.npz: missing"):
        splits.load_split(tmp_path, "validation")
