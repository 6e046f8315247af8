"""Stage train: train the CNN described in params.yaml, on a GPU when there is one, tracked in MLflow.

Config in, the library's pieces (runtime, training, checkpoint) in the middle, data/model,
reports/train and the MLflow run out. Under a multi-worker strategy every worker runs this stage;
only the chief writes outputs and logs.
"""

from __future__ import annotations

import logging
import sys
import time

import keras
import mlflow
import numpy as np
import tensorflow as tf

from fashion_cnn.config.cli import hydra_overrides, stage_main
from fashion_cnn.config.schema import save_resolved
from fashion_cnn.data.splits import load_npz, load_split
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.model.architecture import count_parameters
from fashion_cnn.tracking import faults, runs
from fashion_cnn.training import (
    checkpoint,
    distribute,
    history,
    loop,
    memory_check,
    recipe,
    runtime,
    trained_model,
    verdict,
)
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import atomic, paths
from fashion_cnn.utils.atomic import atomic_path, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def train(
    config: ProjectConfig, project: paths.ProjectPaths, task: distribute.Task = distribute.SINGLE_PROCESS
) -> dict[str, float]:
    """Train on data/prepared; the chief writes data/model and reports/train and logs to the active run."""
    device = runtime.select_device(config.train.device, config.train.inter_op_threads)
    # First TensorFlow work after choosing devices: multi-worker collectives are set up at start-up.
    strategy = distribute.make_strategy(config.train.strategy, device)
    settings = runtime.resolve_runtime(config.train, device, strategy)
    runtime.seed_everything(config.seed, config.train.deterministic)
    train_split = load_split(project.prepared_dir, "train")
    validation_split = load_split(project.prepared_dir, "validation")
    print(
        f"training {config.model.name} ({count_parameters(config.model):,} parameters): "
        f"{len(train_split.labels):,} train / {len(validation_split.labels):,} validation images, "
        f"{settings.replicas} replica(s), global batch {settings.global_batch_size}",
        flush=True,
    )
    if task.is_chief:
        loop.log_run_setup(config, settings, task, train_split)
    started = time.perf_counter()
    # Resuming covers single-process training; distributed runs start over after an interruption.
    checkpoint_dir = project.train_checkpoint_dir if strategy is None else None
    model, rows = loop.fit(
        config,
        train_split,
        validation_split,
        settings,
        strategy,
        chief=task.is_chief,
        checkpoint_dir=checkpoint_dir,
    )
    # A model that learned nothing is not saved (every worker stops): the previous one stays.
    if reason := verdict.learned_nothing(rows, len(validation_split.labels)):
        if task.is_chief:
            faults.log_safely(mlflow.set_tags, {"learned_nothing": "true", "learned_nothing.reason": reason})
        raise FashionCnnError(verdict.refusal(reason, project.model_file))
    metrics = loop.summarize(rows, time.perf_counter() - started)
    if task.is_chief:
        save_and_log(config, project, model, rows, metrics, validation_split.images, strategy)
    else:
        # Every worker takes part in saving (TensorFlow's multi-worker rule); this copy is discarded.
        with distribute.scratch_model_path(project.model_file.name) as scratch:
            model.save(scratch)
    distribute.wait_for_all_workers(strategy)
    return metrics


def save_and_log(
    config: ProjectConfig,
    project: paths.ProjectPaths,
    model: keras.Model,
    rows: list[dict[str, float]],
    metrics: dict[str, float],
    example_images: np.ndarray,
    strategy: tf.distribute.Strategy | None,
) -> None:
    """The chief's outputs: data/model and reports/train, and their copies in the MLflow run."""
    summary = loop.model_summary(model)
    # All of data/model and reports/train or none: an interruption leaves the old set, not a mix.
    with atomic.together():
        with atomic_path(project.model_file, suffix=".keras") as temp_model:
            model.save(temp_model)
        save_resolved(config, project.model_dir / "config.yaml")
        write_text_atomic(project.model_dir / "summary.txt", summary)
        history.write_history(project.history_file, rows)
        write_json_atomic(project.train_metrics_file, metrics)
        # The run these outputs belong to, with them: a training that fails or is stopped leaves the
        # previous model beside its own run, not beside the run that failed.
        runs.write_run_info(project, mlflow.active_run())
    faults.log_safely(
        mlflow.log_metrics,
        {"train_seconds": metrics["train_seconds"], "seconds_per_epoch": metrics["seconds_per_epoch"]},
    )
    faults.log_safely(mlflow.log_text, summary, "model_summary.txt")
    faults.log_safely(mlflow.log_artifact, str(project.model_dir / "config.yaml"))
    faults.log_safely(mlflow.log_artifact, str(project.history_file))
    # A distributed model's predict would wait for the other workers: log a plain copy of it instead.
    loggable = model if strategy is None else trained_model.load_model(project.model_file)
    faults.log_safely(loop.log_model, loggable, example_images)
    # Only now, with every output written, is the checkpoint no longer needed to resume.
    checkpoint.discard(project.train_checkpoint_dir)


def run_name(config: ProjectConfig, overrides: list[str]) -> str:
    """The preset name plus what the command line changed, e.g. 'seed_cnn train.optimizer=adam'."""
    changed = [item for item in overrides if not item.startswith("model=")]
    return " ".join([config.model.name, *changed])[:200]


def preflight(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Params errors that need the machine or the data, reported before any run or output is started:
    a GPU asked for but absent, steps_per_execution that does not divide an epoch (one replica), a
    model and batch that would not fit in memory."""
    runtime.select_device(config.train.device, config.train.inter_op_threads)
    if warning := memory_check.check_memory(config):
        log.warning("%s", warning)
    train_images = len(load_npz(project.prepared_dir / "train.npz", ("labels",))["labels"])
    steps = recipe.steps_per_epoch(train_images, distribute.global_batch_size(config.train, 1))
    recipe.check_steps_per_execution(steps, config.train.steps_per_execution)


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.stages.train` (on every worker under multi_worker)."""
    # TF_CONFIG is checked before any work; it decides who writes and logs.
    task = distribute.current_task(config.train.strategy)
    if not task.is_chief:
        print(f"worker {task.task_type}:{task.index} of {task.workers}: training; the chief writes and logs")
        train(config, project, task)
        return
    overrides = hydra_overrides()
    # Params errors first: a refused run touches nothing, not even the lock file.
    preflight(config, project)
    with (
        checkpoint.training_lock(project.train_lock_file),
        runs.stage_run(
            project, config, "train", run_name(config, overrides), config.tracking.experiment_name, overrides
        ),
    ):
        train(config, project, task)


if __name__ == "__main__":
    sys.argv.extend(distribute.hydra_overrides_for_worker())
    main()
