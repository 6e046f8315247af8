"""Training pieces the train stage puts together: the epoch and progress reports, fit (the model built,
compiled with training/recipe.py's loss and optimizer, and trained), and the run's setup in MLflow.

Under a multi-worker strategy every worker runs fit; only the chief writes outputs and logs.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import keras
import tensorflow as tf

from fashion_cnn.data.splits import Split
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.model.architecture import build_model, count_parameters, describe
from fashion_cnn.tracking import record
from fashion_cnn.training import checkpoint, cross_entropy, distribute, recipe, runtime
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import progress


class TrainingDiverged(FashionCnnError):
    """The loss became NaN or infinite."""


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
            record.params(self.effective.as_params())

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
            record.metrics(epoch_metrics, step=epoch + 1)
        # Printed last, so a Ctrl-C prompted by this line does not cut the MLflow write short (an
        # interrupted SQLite write can leave the store locked) and, with train.checkpoint, lands
        # while the epoch's checkpoint is being saved, which holds it back until the save is done.
        print(
            f"epoch {epoch + 1}/{self.total_epochs}: loss {row['loss']:.4f} accuracy "
            f"{row['accuracy']:.4f} val_loss {row['val_loss']:.4f} val_accuracy "
            f"{row['val_accuracy']:.4f} ({row['epoch_seconds']:.1f} s)",
            flush=True,
        )


class ProgressReport(keras.callbacks.Callback):
    """Signs of life within an epoch: a live bar in a terminal, else a plain line at most every 30 s
    with the step, images/s and the time left in the epoch and the run (fashion_cnn.utils.progress)."""

    def __init__(self, total_epochs: int, steps_per_epoch: int, batch_size: int) -> None:
        super().__init__()
        self.total_epochs, self.steps_per_epoch, self.batch_size = total_epochs, steps_per_epoch, batch_size
        self.epoch = 0
        self.progress: progress.Progress | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch
        label = f"epoch {epoch + 1}/{self.total_epochs}"
        self.progress = progress.Progress(label, self.steps_per_epoch, "step", "images", self.batch_size)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = batch + 1
        # Later epochs take as long as this one is taking.
        later_epochs = self.total_epochs - self.epoch - 1
        run_left = self.progress.seconds_left(step) + later_epochs * self.progress.seconds_for(
            step, self.steps_per_epoch
        )
        self.progress.update(step, f"run ETA {progress.duration(run_left)}")


class BatchHooksWithoutLogs(keras.callbacks.CallbackList):
    """Keras's callback list, except that batch hooks get no logs.

    With TensorFlow, Keras converts every step's logs to Python numbers before it calls any batch
    hook, which waits for the device to finish the step (a host sync per step, or per
    steps_per_execution). None of the project's batch hooks reads them, so none is converted.
    """

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        for callback in self.callbacks:
            callback.on_train_batch_end(batch, logs=None)

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        for callback in self.callbacks:
            callback.on_test_batch_end(batch, logs=None)


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

    The caller has applied the settings (runtime.apply_precision) and checked train.steps_per_execution.
    With train.checkpoint and a `checkpoint_dir`, the state is saved there after every epoch and a
    rerun with the same params and data resumes after the last completed epoch.
    """
    batch_size = settings.global_batch_size
    steps_per_epoch = recipe.steps_per_epoch(len(train_split.labels), batch_size)
    # Variables created in the strategy's scope are mirrored on every replica.
    with distribute.strategy_scope(strategy):
        model = build_model(config.model)
        model.compile(
            loss=recipe.loss(config.train),
            optimizer=recipe.optimizer(config.train, settings.learning_rate, steps_per_epoch),
            metrics=["accuracy", cross_entropy.metric()],
            jit_compile=settings.jit_compile,
            steps_per_execution=config.train.steps_per_execution,
        )
    report = EpochReport(config.train.epochs, log_to_mlflow=chief)
    callbacks = [ProgressReport(config.train.epochs, steps_per_epoch, batch_size), report]
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
        callbacks=BatchHooksWithoutLogs(
            callbacks, add_history=True, epochs=config.train.epochs, steps=steps_per_epoch, model=model
        ),
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


def log_run_setup(
    config: ProjectConfig, settings: runtime.Runtime, task: distribute.Task, train_split: Split
) -> None:
    """Tags, how training is spread (strategy, replicas, global batch, learning rate) and the dataset.

    Device, precision and XLA are logged by EpochReport once fit has started, as read back from
    the model: what ran, not what was asked.
    """
    record.tags({"tensorflow": tf.__version__, "keras": keras.__version__, "model.name": config.model.name})
    record.params(
        {
            "model.summary": describe(config.model),
            "model.parameters": count_parameters(config.model),
            "runtime.strategy": settings.strategy,
            "runtime.workers": task.workers,
            "runtime.replicas": settings.replicas,
            "runtime.global_batch_size": settings.global_batch_size,
            "runtime.learning_rate": settings.learning_rate,
            "runtime.inter_op_threads": settings.inter_op_threads,
        }
    )
    record.dataset(train_split.images, train_split.labels, "fashion-mnist-train", "training")


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
