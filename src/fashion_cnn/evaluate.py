"""Stage 4: test metrics, per-class scores and the confusion matrix of the trained model."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
from pathlib import Path

# Hide TensorFlow's C++ start-up chatter (CUDA probing on CPU machines); users may override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as sklearn_metrics  # noqa: E402

from fashion_cnn import CLASS_NAMES, cross_entropy, paths, plotting, tracking, trained_model  # noqa: E402
from fashion_cnn.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from fashion_cnn.config import ProjectConfig  # noqa: E402
from fashion_cnn.data import Split, load_split  # noqa: E402
from fashion_cnn.stage import stage_main  # noqa: E402

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


def to_csv(rows: list[dict]) -> str:
    """Rows of dicts as CSV text with a header."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def hardware() -> str:
    """A short description of the machine, for the reported numbers."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU" if gpus else "no GPU"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {device}"


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_record(project: paths.ProjectPaths) -> dict[str, dict[str, str]]:
    """The files this evaluation read, by path and hash (read now, not copied from dvc.lock)."""
    files = {"model": project.model_file, "test_split": project.prepared_dir / "test.npz"}
    return {
        name: {"path": str(path.relative_to(project.root)), "sha256": sha256(path)}
        for name, path in files.items()
    }


def evaluate(project: paths.ProjectPaths) -> dict:
    """Score the model on the test split, write reports/metrics.json and reports/evaluate/."""
    print(f"evaluating {project.model_file} on the test split", flush=True)
    model = trained_model.load_model(project.model_file)
    test_split = load_split(project.prepared_dir, "test")
    inputs = input_record(project)
    test = score(model, test_split)
    train_metrics = json.loads(project.train_metrics_file.read_text())
    report = {
        "test": {
            "accuracy": round(test["accuracy"], 4),
            "loss": round(test["loss"], 4),
            "macro_f1": round(float(np.mean([row["f1"] for row in test["per_class"]])), 4),
            "images": len(test_split.labels),
        },
        "validation": {
            "accuracy": round(train_metrics["val_accuracy"], 4),
            "loss": round(train_metrics["val_loss"], 4),
        },
        "f1": {row["class"]: round(row["f1"], 4) for row in test["per_class"]},
        "train_seconds": train_metrics["train_seconds"],
        "hardware": hardware(),
    }
    write_json_atomic(project.metrics_file, report)
    write_json_atomic(project.evaluate_dir / "inputs.json", inputs)
    write_text_atomic(project.evaluate_dir / "per_class.csv", to_csv(test["per_class"]))
    pairs = [
        {"actual": CLASS_NAMES[actual], "predicted": CLASS_NAMES[predicted]}
        for actual, predicted in zip(test_split.labels, test["predicted"], strict=True)
    ]
    write_text_atomic(project.evaluate_dir / "confusion.csv", to_csv(pairs))
    figure = plotting.plot_confusion_matrix(test["confusion"], CLASS_NAMES)
    plotting.save_figure(figure, project.figures_dir / "confusion_matrix.png")

    tracking.log_safely(
        mlflow.log_metrics,
        {
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "test_macro_f1": report["test"]["macro_f1"],
            **{
                f"test_f1.{row['class'].replace('/', '_').replace(' ', '_')}": row["f1"]
                for row in test["per_class"]
            },
        },
    )
    tracking.log_safely(
        mlflow.log_input,
        mlflow.data.from_numpy(test_split.images, targets=test_split.labels, name="fashion-mnist-test"),
        context="testing",
    )
    tracking.log_safely(
        mlflow.set_tags, {f"evaluate.{name}_sha256": record["sha256"] for name, record in inputs.items()}
    )
    for path in (
        project.evaluate_dir / "inputs.json",
        project.evaluate_dir / "per_class.csv",
        project.figures_dir / "confusion_matrix.png",
        project.metrics_file,
    ):
        tracking.log_safely(mlflow.log_artifact, str(path), artifact_path="evaluate")
    return report


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.evaluate`."""
    with trained_model.model_run(project, config, "evaluate"):
        report = evaluate(project)
    print(f"test accuracy {report['test']['accuracy']:.4f}, loss {report['test']['loss']:.4f}")


if __name__ == "__main__":
    main()
