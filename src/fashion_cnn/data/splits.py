"""The data: raw IDX files to standardized splits (the prepare stage's recipe), and the prepared arrays
as prepare saves them and train, evaluate and the figures load them."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashion_cnn.config.sections import DataConfig
from fashion_cnn.data.idx import IMAGE_SIDE, NUM_CLASSES, load_images, load_labels
from fashion_cnn.errors import ConfigError, DataError
from fashion_cnn.utils import records
from fashion_cnn.utils.atomic import atomic_path

SPLITS = ("train", "validation", "test")
STATS_FILE = "standardization.npz"


@dataclass(frozen=True)
class Split:
    """Images (count, 28, 28, 1) float32 and their labels (count,) uint8.

    The images are standardized (load_split: what the model's layers train on) or grey levels 0..255
    (load_pixels: what the saved model takes); split_and_standardize also keeps the original uint8
    pixels (count, 28, 28), which prepare saves beside the standardized images.
    """

    images: np.ndarray
    labels: np.ndarray
    pixels: np.ndarray | None = None


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Save arrays to an uncompressed .npz, atomically."""
    with atomic_path(path) as temp_path, open(temp_path, "wb") as file:
        np.savez(file, **arrays)


def save_prepared(prepared_dir: Path, splits: dict[str, Split], mean: np.ndarray, std: np.ndarray) -> None:
    """Write each split (standardized images, labels and original pixels) and the statistics."""
    for name, split in splits.items():
        arrays = {"images": split.images, "labels": split.labels}
        if split.pixels is not None:
            arrays["pixels"] = split.pixels
        save_npz(prepared_dir / f"{name}.npz", **arrays)
    save_npz(prepared_dir / STATS_FILE, mean=mean, std=std)


# What the messages about a damaged file say to do.
PREPARED_REBUILD = "restore it with `dvc checkout data/prepared` or rebuild it with `dvc repro prepare`"
RAW_REBUILD = "restore it with `dvc checkout data/raw` or fetch it again with `dvc repro download`"


def load_npz(path: Path, keys: tuple[str, ...], rebuild: str = PREPARED_REBUILD) -> dict[str, np.ndarray]:
    """Load named arrays from an .npz, naming the file when it is missing, damaged or lacks a key, and
    saying how to get it back (`rebuild`; by default, for the prepared arrays).

    Reading an array through the zip archive checks it against the CRC-32 stored beside it, so
    flipped bytes in an array read are found (zipfile raises BadZipFile "Bad CRC-32").
    """
    records.check_file(path, rebuild)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing} (has {archive.files}); {rebuild}")
            return {key: archive[key] for key in keys}
    except zipfile.BadZipFile as error:
        if "CRC" in str(error):
            problem = f"corrupt: {error} (its bytes changed after it was written)"
        else:
            problem = f"truncated or not an .npz archive ({error})"
        raise DataError(f"{path}: {problem}; {rebuild}") from None
    except (OSError, ValueError, EOFError) as error:
        problem = f"corrupt: not a readable .npz archive ({error})"
        raise DataError(f"{path}: {problem}; {rebuild}") from None


def check_split(split: Split, path: Path) -> Split:
    """Reject arrays edited by hand: wrong shape or dtype, NaN, labels outside 0..9."""
    images, labels = split.images, split.labels
    if images.dtype != np.float32 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE, 1):
        raise DataError(
            f"{path}: images must be float32 of shape (count, 28, 28, 1), got {images.dtype} "
            f"{images.shape}; {PREPARED_REBUILD}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{path}: {labels.shape} labels for {images.shape[0]} images; {PREPARED_REBUILD}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be integers (uint8), got {labels.dtype}; {PREPARED_REBUILD}")
    if not np.isfinite(images).all():
        raise DataError(f"{path}: images contain NaN or infinite values; {PREPARED_REBUILD}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels outside 0..{NUM_CLASSES - 1}; {PREPARED_REBUILD}")
    return split


def load_split(prepared_dir: Path, name: str) -> Split:
    """Load and check one prepared split (train, validation or test)."""
    path = prepared_dir / f"{name}.npz"
    arrays = load_npz(path, ("images", "labels"))
    return check_split(Split(arrays["images"], arrays["labels"]), path)


def load_pixels(prepared_dir: Path, name: str) -> Split:
    """One prepared split as grey levels 0..255, (count, 28, 28, 1) float32: what the saved model takes."""
    path = prepared_dir / f"{name}.npz"
    arrays = load_npz(path, ("pixels", "labels"))
    pixels = arrays["pixels"]
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{path}: pixels must be uint8 of shape (count, 28, 28), got {pixels.dtype} {pixels.shape}; "
            f"{PREPARED_REBUILD}"
        )
    return check_split(Split(pixels[..., np.newaxis].astype(np.float32), arrays["labels"]), path)


def load_standardization(prepared_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The per-pixel mean and std (each (1, 28, 28) float32, std > 0) of the training split."""
    path = prepared_dir / STATS_FILE
    arrays = load_npz(path, ("mean", "std"))
    mean, std = arrays["mean"], arrays["std"]
    expected = (1, IMAGE_SIDE, IMAGE_SIDE)
    if any(array.dtype != np.float32 or array.shape != expected for array in (mean, std)):
        raise DataError(
            f"{path}: mean and std must be float32 of shape (1, 28, 28), got {mean.dtype} {mean.shape} "
            f"and {std.dtype} {std.shape}; {PREPARED_REBUILD}"
        )
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise DataError(f"{path}: mean and std must be finite and std above 0; {PREPARED_REBUILD}")
    return mean, std


# Added to the per-pixel std so that always-black border pixels do not divide by zero.
STD_EPSILON = 1e-7


def load_raw(raw_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one raw split ('train' or 't10k'), checked for matching counts."""
    images = _load_raw_file(raw_dir / f"{prefix}-images-idx3-ubyte.gz", load_images)
    labels = _load_raw_file(raw_dir / f"{prefix}-labels-idx1-ubyte.gz", load_labels)
    if len(images) != len(labels):
        raise DataError(
            f"{prefix}-images-idx3-ubyte.gz has {len(images)} images but "
            f"{prefix}-labels-idx1-ubyte.gz has {len(labels)} labels (in {raw_dir}: files of different "
            f"downloads?); {RAW_REBUILD}"
        )
    return images, labels


def _load_raw_file(path: Path, loader: Callable[[Path], np.ndarray]) -> np.ndarray:
    """One raw file through its idx loader; any problem names its path and how to fetch it again."""
    records.check_file(path, RAW_REBUILD)
    try:
        return loader(path)
    except DataError as error:
        # idx names the file by its name alone and knows nothing of the pipeline.
        raise DataError(f"{path}: {str(error).removeprefix(f'{path.name}: ')}; {RAW_REBUILD}") from None


def split_and_standardize(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    data_config: DataConfig,
) -> tuple[dict[str, Split], np.ndarray, np.ndarray]:
    """The seed's recipe: last `validation_size` images validate; standardize with train stats."""
    validation_size = data_config.validation_size
    if validation_size >= len(train_images):
        raise ConfigError(
            f"invalid params: data.validation_size = {validation_size}: must be smaller than the "
            f"{len(train_images)} training images"
        )
    cut = len(train_images) - validation_size
    raw = {
        "train": (
            train_images[:cut][: data_config.max_train_images],
            train_labels[:cut][: data_config.max_train_images],
        ),
        "validation": (train_images[cut:], train_labels[cut:]),
        "test": (
            test_images[: data_config.max_test_images],
            test_labels[: data_config.max_test_images],
        ),
    }
    train_float = raw["train"][0].astype(np.float32)
    mean = train_float.mean(axis=0, keepdims=True)  # (1, 28, 28)
    std = train_float.std(axis=0, keepdims=True) + STD_EPSILON
    splits = {
        name: Split(
            ((images.astype(np.float32) - mean) / std)[..., np.newaxis],  # (count, 28, 28, 1)
            labels.astype(np.uint8),
            images.astype(np.uint8),
        )
        for name, (images, labels) in raw.items()
    }
    return splits, mean, std
