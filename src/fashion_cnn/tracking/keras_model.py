"""Logging a trained Keras model to MLflow (the keras flavour), and the one workaround it needs.

mlflow.keras.save_model (MLflow 3.17) writes the input example into the model folder before it creates
that folder (mlflow#16183), so log_model with an input_example fails with FileNotFoundError. MLflow has
no public way to create the folder first, so `_model_folder_created_first` wraps the private
`mlflow.keras.save._save_example` for the duration of one call. tests/test_tracking.py fails when
MLflow renames that function, changes its arguments, or fixes the bug (then delete the workaround).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

# The arguments the workaround passes on to mlflow.keras.save._save_example, in order.
PATCHED_ARGUMENTS = ("mlflow_model", "input_example", "path")


@contextlib.contextmanager
def _model_folder_created_first() -> Iterator[None]:
    """Within the block, the model folder exists before mlflow.keras writes the input example into it."""
    import mlflow.keras.save

    original = mlflow.keras.save._save_example

    def save_example(mlflow_model: Any, input_example: Any, path: str, *args: Any) -> Any:
        os.makedirs(path, exist_ok=True)
        return original(mlflow_model, input_example, path, *args)

    mlflow.keras.save._save_example = save_example
    try:
        yield
    finally:
        mlflow.keras.save._save_example = original


def log_model(model: Any, example_images: np.ndarray) -> None:  # model: keras.Model
    """Log the Keras model to the active MLflow run with a signature and an input example."""
    import keras
    import mlflow
    import mlflow.keras
    import tensorflow as tf

    example = example_images[:2]  # (2, 28, 28, 1)
    signature = mlflow.models.infer_signature(example, model.predict(example, verbose=0))
    # Pinned as MLflow would infer them, without its inference (a subprocess that reloads the model
    # and TensorFlow: about 25 s per run on 2 cores).
    requirements = [f"mlflow=={mlflow.__version__}", f"keras=={keras.__version__}"]
    requirements += [f"numpy=={np.__version__}", f"tensorflow=={tf.__version__}"]
    # MLflow checks the input example with a predict call of its own, which draws a Keras progress
    # bar: keep that out of the stage's output.
    with _model_folder_created_first(), contextlib.redirect_stdout(io.StringIO()):
        mlflow.keras.log_model(
            model, name="model", signature=signature, input_example=example, pip_requirements=requirements
        )
