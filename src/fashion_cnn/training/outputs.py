"""What a training leaves: data/model and reports/train, written together, and their copies in the
training's MLflow run. The train stage saves and logs them as it ends; tools/log_training logs them
later from disk (same function), for a run whose tracking server stopped answering."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from fashion_cnn.config.schema import save_resolved
from fashion_cnn.tracking import record
from fashion_cnn.training import history, loop, trained_model
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import atomic, paths
from fashion_cnn.utils.atomic import atomic_path, write_json_atomic, write_text_atomic

# The totals of reports/train/metrics.json that are logged as run metrics (the rest are per epoch).
TOTALS = ("train_seconds", "seconds_per_epoch")
SUMMARY_FILE = "summary.txt"


def save(
    config: ProjectConfig,
    project: paths.ProjectPaths,
    model: keras.Model,
    rows: list[dict[str, float]],
    metrics: dict[str, float],
    run: Any,
) -> str:
    """Write data/model and reports/train, all or none (an interruption leaves the old set, not a mix);
    return the model's summary."""
    summary = loop.model_summary(model)
    with atomic.together():
        with atomic_path(project.model_file, suffix=".keras") as temp_model:
            model.save(temp_model)
        save_resolved(config, project.model_dir / "config.yaml")
        write_text_atomic(project.model_dir / SUMMARY_FILE, summary)
        history.write_history(project.history_file, rows)
        write_json_atomic(project.train_metrics_file, metrics)
        # The run these outputs belong to, with them: a training that fails or is stopped leaves the
        # previous model beside its own run, not beside the run that failed.
        trained_model.write_run_info(project, run)
    return summary


def log(
    project: paths.ProjectPaths,
    summary: str,
    metrics: dict[str, Any],
    model: keras.Model | None,
    example_images: np.ndarray,
) -> None:
    """Log the saved outputs into the active MLflow run: the totals, the summary, config.yaml,
    history.csv and (unless None: the run has it) the model with its input example."""
    record.metrics({name: metrics[name] for name in TOTALS})
    record.text(summary, "model_summary.txt")
    record.artifact(project.model_dir / "config.yaml")
    record.artifact(project.history_file)
    if model is not None:
        record.model(model, example_images)
