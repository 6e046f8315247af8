"""Stage 2: split, standardize and save Fashion-MNIST as the seed notebook does."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np

from fashion_cnn import atomic, paths, tracking
from fashion_cnn.config import ConfigError, DataConfig, DataError, ProjectConfig
from fashion_cnn.data import STATS_FILE, Split, save_npz
from fashion_cnn.idx import load_images, load_labels
from fashion_cnn.stage import hydra_overrides, stage_main

log = logging.getLogger(__name__)

# Added to the per-pixel std so that always-black border pixels do not divide by zero.
STD_EPSILON = 1e-7


def load_raw(raw_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one raw split ('train' or 't10k'), checked for matching counts."""
    images = load_images(raw_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = load_labels(raw_dir / f"{prefix}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise DataError(
            f"{prefix}-images-idx3-ubyte.gz has {len(images)} images but "
            f"{prefix}-labels-idx1-ubyte.gz has {len(labels)} labels"
        )
    return images, labels


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
        )
        for name, (images, labels) in raw.items()
    }
    return splits, mean, std


def prepare(raw_dir: Path, prepared_dir: Path, data_config: DataConfig) -> dict[str, int]:
    """Read data/raw, write data/prepared; return the size of each split."""
    log.info("preparing %s from %s", prepared_dir, raw_dir)
    train_images, train_labels = load_raw(raw_dir, "train")
    test_images, test_labels = load_raw(raw_dir, "t10k")
    splits, mean, std = split_and_standardize(
        train_images, train_labels, test_images, test_labels, data_config
    )
    # All four files or none: an interrupted prepare never leaves new splits beside old statistics.
    with atomic.together():
        for name, split in splits.items():
            save_npz(prepared_dir / f"{name}.npz", images=split.images, labels=split.labels)
        save_npz(prepared_dir / STATS_FILE, mean=mean, std=std)
    sizes = {name: len(split.labels) for name, split in splits.items()}
    log.info("prepared %s", ", ".join(f"{name}: {size}" for name, size in sizes.items()))
    return sizes


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.prepare`."""
    with tracking.stage_run(
        project,
        config,
        "prepare",
        "prepare",
        config.tracking.pipeline_experiment_name,
        hydra_overrides(),
    ):
        sizes = prepare(project.raw_dir, project.prepared_dir, config.data)
        mlflow.log_metrics({f"{name}_images": size for name, size in sizes.items()})


if __name__ == "__main__":
    main()
