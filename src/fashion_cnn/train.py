"""Stage 3: train the CNN described in params.yaml, on a GPU when there is one, tracked in MLflow."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

# Hide TensorFlow's C++ start-up chatter (CUDA probing on CPU machines); users may override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fashion_cnn import checkpoint, memory, paths, tracking  # noqa: E402
from fashion_cnn.atomic import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from fashion_cnn.config import (  # noqa: E402
    ConfigError,
    FashionCnnError,
    ProjectConfig,
    TrainConfig,
    hydra_overrides,
    save_resolved,
    stage_main,
)
from fashion_cnn.data import Split, load_split  # noqa: E402
from fashion_cnn.model import build_model, count_parameters, describe  # noqa: E402

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")


class TrainingDiverged(FashionCnnError):
    """The loss became NaN or infinite."""


def select_device(requested: str) -> str:
    """'GPU' when asked for (or auto and one is visible), else 'CPU'; a missing GPU is an error."""
    gpus = tf.config.list_physical_devices("GPU")
    if requested == "gpu" and not gpus:
        raise ConfigError(
            "invalid params: train.device = 'gpu': TensorFlow sees no GPU on this machine "
            "(allowed: auto, cpu, gpu; install the GPU extra with `pip install -e .[gpu]`)"
        )
    if requested == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
    return "GPU" if gpus and requested != "cpu" else "CPU"


def resolve_runtime(train_config: TrainConfig, device: str) -> dict[str, Any]:
    """Turn the 'auto' settings into concrete ones for this device."""
    precision = train_config.mixed_precision
    if precision == "auto":
        precision = "mixed_float16" if device == "GPU" else "none"
    jit = train_config.jit_compile == "on" or (train_config.jit_compile == "auto" and device == "GPU")
    return {"device": device, "mixed_precision": precision, "jit_compile": jit}


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow from one key; optionally force deterministic TF ops."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def make_optimizer(train_config: TrainConfig) -> keras.optimizers.Optimizer:
    """The optimizer named in params, with its learning rate (and momentum for sgd)."""
    rate = train_config.learning_rate
    if train_config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=train_config.momentum)
    optimizers = {
        "nadam": keras.optimizers.Nadam,
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
    }
    return optimizers[train_config.optimizer](learning_rate=rate)


class EpochReport(keras.callbacks.Callback):
    """One line per epoch, per-epoch MLflow metrics (step = epoch), and a NaN guard."""

    def __init__(self, total_epochs: int) -> None:
        super().__init__()
        self.total_epochs = total_epochs
        self.rows: list[dict[str, float]] = []
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        row = {"epoch": epoch + 1, "epoch_seconds": time.perf_counter() - self.started}
        row.update({key: float(logs[key]) for key in HISTORY_COLUMNS[1:5]})
        if not math.isfinite(row["loss"]):
            self.model.stop_training = True
            raise TrainingDiverged(
                f"training diverged: the loss became {row['loss']} in epoch {epoch + 1}; "
                f"lower train.learning_rate or check the data"
            )
        self.rows.append(row)
        mlflow.log_metrics({key: value for key, value in row.items() if key != "epoch"}, step=epoch + 1)
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
    runtime: dict[str, Any],
    checkpoint_dir: Path | None = None,
) -> tuple[keras.Model, list[dict[str, float]]]:
    """Build, compile and train the model; return it with the per-epoch history rows.

    With train.checkpoint and a `checkpoint_dir`, the state is saved there after every epoch and a
    rerun with the same params and data resumes after the last completed epoch.
    """
    keras.mixed_precision.set_global_policy(
        "float32" if runtime["mixed_precision"] == "none" else runtime["mixed_precision"]
    )
    model = build_model(config.model)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=make_optimizer(config.train),
        metrics=["accuracy"],
        jit_compile=runtime["jit_compile"],
        steps_per_execution=config.train.steps_per_execution,
    )
    report = EpochReport(config.train.epochs)
    callbacks = [report]
    if config.train.checkpoint and checkpoint_dir is not None:
        run_fingerprint = checkpoint.fingerprint(
            config, train_split.images, train_split.labels, validation_split.images, validation_split.labels
        )
        callbacks.append(checkpoint.ResumableTraining(checkpoint_dir, run_fingerprint, report))
    model.fit(
        train_split.images,
        train_split.labels,
        batch_size=config.train.batch_size,
        epochs=config.train.epochs,
        validation_data=(validation_split.images, validation_split.labels),
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    return model, report.rows


def model_summary(model: keras.Model) -> str:
    """Keras's layer table as text."""
    buffer = io.StringIO()
    model.summary(print_fn=lambda line, **_: buffer.write(line + "\n"))
    return buffer.getvalue()


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """The per-epoch history as CSV (a DVC plot), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.6f}" if key != "epoch" else value) for key, value in row.items()})
    write_text_atomic(path, buffer.getvalue())


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
    mlflow.keras.log_model(model, name="model", signature=signature, input_example=example)


def train(config: ProjectConfig, project: paths.ProjectPaths) -> dict[str, float]:
    """Train on data/prepared, write data/model and reports/train, log everything to the active run."""
    device = select_device(config.train.device)
    runtime = resolve_runtime(config.train, device)
    seed_everything(config.seed, config.train.deterministic)
    if warning := memory.memory_warning(config):
        log.warning("%s", warning)
    train_split = load_split(project.prepared_dir, "train")
    validation_split = load_split(project.prepared_dir, "validation")
    print(
        f"training {config.model.name} ({count_parameters(config.model):,} parameters) on {device} "
        f"[precision {runtime['mixed_precision']}, XLA {'on' if runtime['jit_compile'] else 'off'}, "
        f"{len(train_split.labels):,} train / {len(validation_split.labels):,} validation images]",
        flush=True,
    )
    mlflow.set_tags(
        {
            "device": device,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "model.name": config.model.name,
        }
    )
    mlflow.log_params(
        {
            "model.summary": describe(config.model),
            "model.parameters": count_parameters(config.model),
            "runtime.mixed_precision": runtime["mixed_precision"],
            "runtime.jit_compile": runtime["jit_compile"],
        }
    )
    mlflow.log_input(
        mlflow.data.from_numpy(train_split.images, targets=train_split.labels, name="fashion-mnist-train"),
        context="training",
    )
    started = time.perf_counter()
    model, rows = fit(config, train_split, validation_split, runtime, project.train_checkpoint_dir)
    train_seconds = time.perf_counter() - started

    with atomic_path(project.model_file, suffix=".keras") as temp_model:
        model.save(temp_model)
    save_resolved(config, project.model_dir / "config.yaml")
    summary = model_summary(model)
    write_text_atomic(project.model_dir / "summary.txt", summary)
    write_history(project.history_file, rows)
    last = rows[-1]
    metrics = {
        "train_loss": last["loss"],
        "train_accuracy": last["accuracy"],
        "val_loss": last["val_loss"],
        "val_accuracy": last["val_accuracy"],
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(sum(row["epoch_seconds"] for row in rows) / len(rows), 2),
    }
    write_json_atomic(project.train_metrics_file, metrics)
    mlflow.log_metrics(
        {"train_seconds": metrics["train_seconds"], "seconds_per_epoch": metrics["seconds_per_epoch"]}
    )
    mlflow.log_text(summary, "model_summary.txt")
    mlflow.log_artifact(str(project.model_dir / "config.yaml"))
    mlflow.log_artifact(str(project.history_file))
    log_model(model, validation_split.images)
    # Only now, with every output written, is the checkpoint no longer needed to resume.
    checkpoint.discard(project.train_checkpoint_dir)
    return metrics


def run_name(config: ProjectConfig, overrides: list[str]) -> str:
    """The preset name plus what the command line changed, e.g. 'seed_cnn train.optimizer=adam'."""
    changed = [item for item in overrides if not item.startswith("model=")]
    return " ".join([config.model.name, *changed])[:200]


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.train`."""
    overrides = hydra_overrides()
    # A GPU asked for but absent is a params error: report it before any run or output is started.
    select_device(config.train.device)
    with tracking.stage_run(
        project, config, "train", run_name(config, overrides), config.tracking.experiment_name, overrides
    ) as run:
        tracking.write_run_info(project, run)
        train(config, project)


if __name__ == "__main__":
    main()
