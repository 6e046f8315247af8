"""The sections every stage shares (data, tracking) and the schemas of the stages that read only them.

The model section's schema is model/architecture.py; train's, and the whole file as one training
run's config, training/config.py.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from fashion_cnn.config.schema import ParamsSchema, PositiveInt, Strict


class DataConfig(Strict):
    """Where the four Fashion-MNIST files come from and how they are split."""

    sources: list[str] = Field(min_length=1)
    """Local folders or HTTP(S) mirrors tried in order until one gives all four files with the right
    checksums (Debian's dataset-fashion-mnist installs the first); FASHION_CNN_MIRROR prepends one."""
    timeout_seconds: Annotated[float, Field(gt=0, le=120)]
    """Seconds an HTTP request may wait to connect and for each read."""
    deadline_seconds: Annotated[float, Field(gt=0, le=7200)]
    """Seconds one file's download from one source may take in all (checked between reads); past
    it the next source is tried. 600 s asks at least 44 kB/s of the largest .gz (26 MB)."""
    validation_size: PositiveInt
    """The last N of the 60,000 training images become the validation split (the seed: 5,000)."""
    max_train_images: PositiveInt | None = None
    """Use only the first N training images (null: all); for quick profiles and tests."""
    max_test_images: PositiveInt | None = None
    """Use only the first N test images (null: all)."""


class TrackingConfig(Strict):
    """The MLflow experiments the stages log to."""

    experiment_name: str = Field(min_length=1)
    """The experiment holding one run per trained model (train, evaluate and figures log into it)."""
    pipeline_experiment_name: str = Field(min_length=1)
    """The experiment for the stages that train no model (download, prepare, memory, seed figures)."""


class DataStageConfig(ParamsSchema):
    """What download and prepare read: the data and where MLflow records them."""

    data: DataConfig
    """The data and its splits."""
    tracking: TrackingConfig
    """Where MLflow records the runs."""


class TrackingStageConfig(ParamsSchema):
    """What the stages and tools that read neither data nor model (seed_figures, ui) read."""

    tracking: TrackingConfig
    """Where MLflow records the runs."""
