"""Scoring a trained model on a split: loss, accuracy, per-class scores and the confusion matrix; the
machine and the input files, for the evaluate stage's report."""

from __future__ import annotations

import os

import keras
from sklearn import metrics as sklearn_metrics

from fashion_cnn import CLASS_NAMES
from fashion_cnn.data.splits import Split
from fashion_cnn.training import cross_entropy
from fashion_cnn.utils import machine, paths, records

PREDICT_BATCH = 1000


def score(model: keras.Model, split: Split) -> dict:
    """Loss, accuracy, per-class precision/recall/F1 and the confusion matrix on one split."""
    probabilities = model.predict(split.images, batch_size=PREDICT_BATCH, verbose=0)  # (count, 10)
    predicted = probabilities.argmax(axis=1)
    loss = cross_entropy.mean(split.labels, probabilities)
    labels = list(range(len(CLASS_NAMES)))
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
        split.labels, predicted, labels=labels, zero_division=0
    )
    return {
        "loss": loss,
        "accuracy": float((predicted == split.labels).mean()),
        "predicted": predicted,
        "probabilities": probabilities,
        "per_class": [
            {
                "class": name,
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "support": int(support[index]),
            }
            for index, name in enumerate(CLASS_NAMES)
        ],
        "confusion": sklearn_metrics.confusion_matrix(split.labels, predicted, labels=labels),
    }


def hardware() -> str:
    """A short description of the machine, for the reported numbers: its CPU, cores and the GPUs
    TensorFlow sees (those are the ones it ran on)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU" if gpus else "no GPU"
    return f"{machine.cpu_model()}, {os.cpu_count()} cores, {device}"


def input_record(project: paths.ProjectPaths) -> dict[str, dict[str, str]]:
    """The files this evaluation read, by path and hash (read now, not copied from dvc.lock)."""
    files = {"model": project.model_file, "test_split": project.prepared_dir / "test.npz"}
    return {
        name: {"path": str(path.relative_to(project.root)), "sha256": records.sha256(path)}
        for name, path in files.items()
    }
