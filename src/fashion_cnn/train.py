"""Stage 3: train the CNN described in params.yaml, on a GPU when there is one, tracked in MLflow.

Under a multi-worker strategy every worker runs this stage; only the chief writes outputs and logs.
"""

from __future__ import annotations

import io
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

# Hide TensorFlow's C++ start-up chatter (CUDA probing on CPU machines); users may override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fashion_cnn import (
    checkpoint,
    cross_entropy,
    distribute,
    history,
    memory,
    paths,
    recipe,
    runtime,
    tracking,
)  # noqa: E402
from fashion_cnn.atomic import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from fashion_cnn.config import FashionCnnError, ProjectConfig, TrainConfig, save_resolved  # noqa: E402
from fashion_cnn.data import Split, load_npz, load_split  # noqa: E402
from fashion_cnn.model import build_model, count_parameters, describe  # noqa: E402
from fashion_cnn.stage import hydra_overrides, stage_main  # noqa: E402

log = logging.getLogger(__name__)


class TrainingDiverged(FashionCnnError):
    """The loss became NaN or infinite."""


def make_optimizer(
    train_config: TrainConfig, peak_rate: float, steps_per_epoch: int = 1
) -> keras.optimizers.Optimizer:
    """The optimizer named in params, with its learning rate or a schedule peaking at `peak_rate`
    (and momentum for sgd)."""
    rate = recipe.learning_rate(train_config, steps_per_epoch, peak_rate)
    # Decoupled weight decay (AdamW-style in Keras 3); None is the optimizers' own default.
    weight_decay = train_config.weight_decay or None
    if train_config.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate=rate, momentum=train_config.momentum, weight_decay=weight_decay
        )
    optimizers = {
        "nadam": keras.optimizers.Nadam,
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
    }
    return optimizers[train_config.optimizer](learning_rate=rate, weight_decay=weight_decay)


class EpochReport(keras.callbacks.Callback):
    """One line per epoch, per-epoch MLflow metrics (step = epoch, chief only), and a NaN guard."""

    def __init__(self, total_epochs: int, log_to_mlflow: bool = True) -> None:
        super().__init__()
        self.total_epochs = total_epochs
        self.log_to_mlflow = log_to_mlflow
        self.rows: list[dict[str, float]] = []
        self.started = 0.0
        self.effective: runtime.Effective | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Read back once fit has started: Keras may have refused what was asked (XLA, say).
        self.effective = runtime.read_back(self.model)
        print(f"running on {self.effective.describe()}", flush=True)
        if self.log_to_mlflow:
            tracking.log_safely(mlflow.log_params, self.effective.as_params())

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        row = {"epoch": epoch + 1, "epoch_seconds": time.perf_counter() - self.started}
        # Keras's `loss` is the objective (label smoothing included); `loss` and `val_loss` in the
        # history are plain cross-entropy, the quantity evaluate reports for the test split.
        row.update(
            {
                "objective": float(logs["loss"]),
                "loss": float(logs[cross_entropy.NAME]),
                "accuracy": float(logs["accuracy"]),
                "val_loss": float(logs[f"val_{cross_entropy.NAME}"]),
                "val_accuracy": float(logs["val_accuracy"]),
            }
        )
        if not math.isfinite(row["objective"]):
            self.model.stop_training = True
            raise TrainingDiverged(
                f"training diverged: the loss became {row['objective']} in epoch {epoch + 1}; "
                f"lower train.learning_rate or check the data"
            )
        self.rows.append(row)
        if self.log_to_mlflow:
            epoch_metrics = {key: value for key, value in row.items() if key != "epoch"}
            tracking.log_safely(mlflow.log_metrics, epoch_metrics, step=epoch + 1)
        # Printed last, so a Ctrl-C prompted by this line does not cut the MLflow write short (an
        # interrupted SQLite write can leave the store locked) and, with train.checkpoint, lands
        # while the epoch's checkpoint is being saved, which holds it back until the save is done.
        print(
            f"epoch {epoch + 1}/{self.total_epochs}: loss {row['loss']:.4f} accuracy "
            f"{row['accuracy']:.4f} val_loss {row['val_loss']:.4f} val_accuracy "
            f"{row['val_accuracy']:.4f} ({row['epoch_seconds']:.1f} s)",
            flush=True,
        )


def fit(
    config: ProjectConfig,
    train_split: Split,
    validation_split: Split,
    settings: runtime.Runtime,
    strategy: tf.distribute.Strategy | None,
    chief: bool = True,
    checkpoint_dir: Path | None = None,
) -> tuple[keras.Model, list[dict[str, float]]]:
    """Build, compile and train the model; return it with the per-epoch history rows.

    With train.checkpoint and a `checkpoint_dir`, the state is saved there after every epoch and a
    rerun with the same params and data resumes after the last completed epoch.
    """
    keras.mixed_precision.set_global_policy(
        "float32" if settings.mixed_precision == "none" else settings.mixed_precision
    )
    batch_size = settings.global_batch_size
    steps_per_epoch = recipe.steps_per_epoch(len(train_split.labels), batch_size)
    recipe.check_steps_per_execution(steps_per_epoch, config.train.steps_per_execution)
    # Variables created in the strategy's scope are mirrored on every replica.
    with distribute.strategy_scope(strategy):
        model = build_model(config.model)
        model.compile(
            loss=recipe.loss(config.train),
            optimizer=make_optimizer(config.train, settings.learning_rate, steps_per_epoch),
            metrics=["accuracy", cross_entropy.metric()],
            jit_compile=settings.jit_compile,
            steps_per_execution=config.train.steps_per_execution,
        )
    report = EpochReport(config.train.epochs, log_to_mlflow=chief)
    callbacks = [report]
    first_epoch = 0
    if config.train.checkpoint and checkpoint_dir is not None:
        run_fingerprint = checkpoint.fingerprint(
            config, train_split.images, train_split.labels, validation_split.images, validation_split.labels
        )
        first_epoch = checkpoint.completed_epochs(checkpoint_dir, run_fingerprint)
        callbacks.append(checkpoint.ResumableTraining(checkpoint_dir, run_fingerprint, report, first_epoch))
    # Seeded tf.data batches, reshuffled (and augmented, when on) every epoch; Keras splits each
    # global batch across the replicas (and shards it across workers).
    model.fit(
        **recipe.fit_arguments(config, train_split, validation_split, batch_size, first_epoch),
        epochs=config.train.epochs,
        verbose=0,
        callbacks=callbacks,
    )
    # The saved and logged model keeps stock Keras objects only (not the cross-entropy metric's
    # function), so any Keras loader, MLflow's included, reads it without this package.
    with distribute.strategy_scope(strategy):
        model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"])
    return model, report.rows


def model_summary(model: keras.Model) -> str:
    """Keras's layer table as text."""
    buffer = io.StringIO()
    model.summary(print_fn=lambda line, **_: buffer.write(line + "\n"))
    return buffer.getvalue()


def _save_example_creating_folder(mlflow_model: Any, input_example: Any, path: str, *args: Any) -> None:
    """mlflow.keras writes the input example before creating the model folder (mlflow#16183)."""
    os.makedirs(path, exist_ok=True)
    _original_save_example(mlflow_model, input_example, path, *args)


_original_save_example = mlflow.keras.save._save_example
mlflow.keras.save._save_example = _save_example_creating_folder


def log_model(model: keras.Model, example_images: np.ndarray) -> None:
    """Log the Keras model to the active MLflow run with a signature and an input example."""
    example = example_images[:2]  # (2, 28, 28, 1)
    signature = mlflow.models.infer_signature(example, model.predict(example, verbose=0))
    # Pinned as MLflow would infer them, without its inference (a subprocess that reloads the model
    # and TensorFlow: about 25 s per run on 2 cores).
    requirements = [f"mlflow=={mlflow.__version__}", f"keras=={keras.__version__}"]
    requirements += [f"numpy=={np.__version__}", f"tensorflow=={tf.__version__}"]
    mlflow.keras.log_model(
        model, name="model", signature=signature, input_example=example, pip_requirements=requirements
    )


def log_run_setup(
    config: ProjectConfig, settings: runtime.Runtime, task: distribute.Task, train_split: Split
) -> None:
    """Tags, how training is spread (strategy, replicas, global batch, learning rate) and the dataset.

    Device, precision and XLA are logged by EpochReport once fit has started, as read back from
    the model: what ran, not what was asked.
    """
    tracking.log_safely(
        mlflow.set_tags,
        {"tensorflow": tf.__version__, "keras": keras.__version__, "model.name": config.model.name},
    )
    tracking.log_safely(
        mlflow.log_params,
        {
            "model.summary": describe(config.model),
            "model.parameters": count_parameters(config.model),
            "runtime.strategy": settings.strategy,
            "runtime.workers": task.workers,
            "runtime.replicas": settings.replicas,
            "runtime.global_batch_size": settings.global_batch_size,
            "runtime.learning_rate": settings.learning_rate,
            "runtime.inter_op_threads": settings.inter_op_threads,
        },
    )
    tracking.log_safely(
        mlflow.log_input,
        mlflow.data.from_numpy(train_split.images, targets=train_split.labels, name="fashion-mnist-train"),
        context="training",
    )


def summarize(rows: list[dict[str, float]], train_seconds: float) -> dict[str, float]:
    """reports/train/metrics.json: the last epoch's losses and accuracies, and the time taken."""
    last = rows[-1]
    return {
        "train_loss": last["loss"],
        "train_accuracy": last["accuracy"],
        "val_loss": last["val_loss"],
        "val_accuracy": last["val_accuracy"],
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(sum(row["epoch_seconds"] for row in rows) / len(rows), 2),
    }


def train(
    config: ProjectConfig, project: paths.ProjectPaths, task: distribute.Task = distribute.SINGLE_PROCESS
) -> dict[str, float]:
    """Train on data/prepared; the chief writes data/model and reports/train and logs to the active run."""
    device = runtime.select_device(config.train.device, config.train.inter_op_threads)
    # First TensorFlow work after choosing devices: multi-worker collectives are set up at start-up.
    strategy = distribute.make_strategy(config.train.strategy, device)
    settings = runtime.resolve_runtime(config.train, device, strategy)
    runtime.seed_everything(config.seed, config.train.deterministic)
    if warning := memory.memory_warning(config):
        log.warning("%s", warning)
    train_split = load_split(project.prepared_dir, "train")
    validation_split = load_split(project.prepared_dir, "validation")
    print(
        f"training {config.model.name} ({count_parameters(config.model):,} parameters): "
        f"{len(train_split.labels):,} train / {len(validation_split.labels):,} validation images, "
        f"{settings.replicas} replica(s), global batch {settings.global_batch_size}",
        flush=True,
    )
    if task.is_chief:
        log_run_setup(config, settings, task, train_split)
    started = time.perf_counter()
    # Resuming covers single-process training; distributed runs start over after an interruption.
    checkpoint_dir = project.train_checkpoint_dir if strategy is None else None
    model, rows = fit(
        config,
        train_split,
        validation_split,
        settings,
        strategy,
        chief=task.is_chief,
        checkpoint_dir=checkpoint_dir,
    )
    metrics = summarize(rows, time.perf_counter() - started)
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
    with atomic_path(project.model_file, suffix=".keras") as temp_model:
        model.save(temp_model)
    save_resolved(config, project.model_dir / "config.yaml")
    summary = model_summary(model)
    write_text_atomic(project.model_dir / "summary.txt", summary)
    history.write_history(project.history_file, rows)
    write_json_atomic(project.train_metrics_file, metrics)
    tracking.log_safely(
        mlflow.log_metrics,
        {"train_seconds": metrics["train_seconds"], "seconds_per_epoch": metrics["seconds_per_epoch"]},
    )
    tracking.log_safely(mlflow.log_text, summary, "model_summary.txt")
    tracking.log_safely(mlflow.log_artifact, str(project.model_dir / "config.yaml"))
    tracking.log_safely(mlflow.log_artifact, str(project.history_file))
    # A distributed model's predict would wait for the other workers: log a plain copy of it instead.
    loggable = model if strategy is None else keras.models.load_model(project.model_file, safe_mode=True)
    tracking.log_safely(log_model, loggable, example_images)
    # Only now, with every output written, is the checkpoint no longer needed to resume.
    checkpoint.discard(project.train_checkpoint_dir)


def run_name(config: ProjectConfig, overrides: list[str]) -> str:
    """The preset name plus what the command line changed, e.g. 'seed_cnn train.optimizer=adam'."""
    changed = [item for item in overrides if not item.startswith("model=")]
    return " ".join([config.model.name, *changed])[:200]


def preflight(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Params errors that need the machine or the data, reported before any run or output is started:
    a GPU asked for but absent, steps_per_execution that does not divide an epoch (one replica)."""
    runtime.select_device(config.train.device, config.train.inter_op_threads)
    train_images = len(load_npz(project.prepared_dir / "train.npz", ("labels",))["labels"])
    steps = recipe.steps_per_epoch(train_images, distribute.global_batch_size(config.train, 1))
    recipe.check_steps_per_execution(steps, config.train.steps_per_execution)


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.train` (on every worker under multi_worker)."""
    # TF_CONFIG is checked before any work; it decides who writes and logs.
    task = distribute.current_task(config.train.strategy)
    if not task.is_chief:
        print(f"worker {task.task_type}:{task.index} of {task.workers}: training; the chief writes and logs")
        train(config, project, task)
        return
    overrides = hydra_overrides()
    preflight(config, project)
    with tracking.stage_run(
        project, config, "train", run_name(config, overrides), config.tracking.experiment_name, overrides
    ) as run:
        tracking.write_run_info(project, run)
        train(config, project, task)


if __name__ == "__main__":
    sys.argv.extend(distribute.hydra_overrides_for_worker())
    main()
