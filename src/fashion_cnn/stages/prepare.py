"""Stage prepare: split, standardize and save Fashion-MNIST as the seed notebook does (data/splits.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from fashion_cnn.config.cli import stage_main
from fashion_cnn.config.sections import DataConfig, DataStageConfig
from fashion_cnn.data import splits as data
from fashion_cnn.tracking import record, runs
from fashion_cnn.utils import atomic, paths

log = logging.getLogger(__name__)


def prepare(raw_dir: Path, prepared_dir: Path, data_config: DataConfig) -> dict[str, int]:
    """Read data/raw, write data/prepared; return the size of each split."""
    log.info("preparing %s from %s", prepared_dir, raw_dir)
    train_images, train_labels = data.load_raw(raw_dir, "train")
    test_images, test_labels = data.load_raw(raw_dir, "t10k")
    splits, mean, std = data.split_and_standardize(
        train_images, train_labels, test_images, test_labels, data_config
    )
    # All four files or none: an interrupted prepare never leaves new splits beside old statistics.
    with atomic.together():
        data.save_prepared(prepared_dir, splits, mean, std)
    sizes = {name: len(split.labels) for name, split in splits.items()}
    log.info("prepared %s", ", ".join(f"{name}: {size}" for name, size in sizes.items()))
    return sizes


@stage_main
def main(config: DataStageConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.stages.prepare`."""
    with runs.pipeline_run(project, config, "prepare"):
        sizes = prepare(project.raw_dir, project.prepared_dir, config.data)
        record.metrics({f"{name}_images": size for name, size in sizes.items()})


if __name__ == "__main__":
    main()
