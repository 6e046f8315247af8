"""The one way the stages and tools log to MLflow: every call here goes through the keep-going policy
(tracking/faults.py), so a store or server that fails mid-stage costs records, never the stage's outputs;
the failed calls are named, by MLflow's function names, in the stage's last line.

`from fashion_cnn.tracking import record` then `record.metrics({...})`, `record.artifact(path)`, ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from fashion_cnn.config.schema import ParamsSchema, flatten
from fashion_cnn.tracking import faults, keras_model

# MLflow refuses param values over 6000 characters and batches over 100 params.
MAX_PARAM_LENGTH = 6000
PARAM_BATCH = 100


def params(values: dict[str, Any]) -> None:
    """Log params of the active run."""
    faults.log_safely(mlflow.log_params, values)


def metrics(values: dict[str, float], step: int | None = None) -> None:
    """Log metrics of the active run (at `step`, e.g. the epoch, when given)."""
    faults.log_safely(mlflow.log_metrics, values, step=step)


def tags(values: dict[str, Any]) -> None:
    """Set tags of the active run."""
    faults.log_safely(mlflow.set_tags, values)


def tag(key: str, value: Any) -> None:
    """Set one tag of the active run."""
    faults.log_safely(mlflow.set_tag, key, value)


def text(content: str, name: str) -> None:
    """Log `content` as the run's artifact file `name`."""
    faults.log_safely(mlflow.log_text, content, name)


def artifact(path: Path, folder: str | None = None) -> None:
    """Copy a file into the run's artifacts (under `folder`, when given)."""
    faults.log_safely(mlflow.log_artifact, str(path), artifact_path=folder)


def artifacts(paths: list[Path], folder: str | None = None) -> None:
    """Copy each file into the run's artifacts (under `folder`, when given)."""
    for path in paths:
        artifact(path, folder)


def dataset(images: np.ndarray, labels: np.ndarray, name: str, context: str) -> None:
    """Record the images and labels a run used (their digest and shapes, not the arrays) as an input."""
    faults.log_safely(
        mlflow.log_input, mlflow.data.from_numpy(images, targets=labels, name=name), context=context
    )


def log_config(config: ParamsSchema) -> None:
    """Every key as a flat dotted param (in batches MLflow accepts), and the whole as config.yaml;
    MLflow's errors are raised (`config` is the keep-going call)."""
    items = [(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in flatten(config).items()]
    for start in range(0, len(items), PARAM_BATCH):
        mlflow.log_params(dict(items[start : start + PARAM_BATCH]))
    mlflow.log_dict(config.model_dump(mode="json"), "config.yaml")


def config(config: ParamsSchema) -> None:
    """Log the whole resolved config as flat dotted params and as config.yaml."""
    faults.log_safely(log_config, config)


def model(trained: Any, example_images: np.ndarray) -> None:
    """Log a Keras model (MLflow's keras flavour) with its signature and an input example."""
    faults.log_safely(keras_model.log_model, trained, example_images)
