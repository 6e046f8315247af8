"""Stage evaluate: test metrics, per-class scores and the confusion matrix of the trained model.

It scores the model in data/model (fashion_cnn.evaluation.scores) on the test split's raw pixels, keeps
what the model computed for the figures of what it learned (data/evaluate/model_outputs.npz,
fashion_cnn.evaluation.model_outputs), logs into that model's MLflow run and registers the run's logged
model as a new version of the registered model named after its experiment, tagged with its accuracy and
data (fashion_cnn.tracking.registry).
"""

from __future__ import annotations

import numpy as np

from fashion_cnn import CLASS_NAMES
from fashion_cnn.config.cli import stage_main
from fashion_cnn.data.splits import load_pixels
from fashion_cnn.evaluation import model_outputs, scores
from fashion_cnn.figures import plotting
from fashion_cnn.tracking import record, registry
from fashion_cnn.training import trained_model
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths, records
from fashion_cnn.utils.atomic import write_json_atomic, write_text_atomic


def evaluate(project: paths.ProjectPaths) -> dict:
    """Score the model on the test split, write reports/metrics.json and reports/evaluate/."""
    print(f"evaluating {project.model_file} on the test split", flush=True)
    model = trained_model.load_model(project.model_file)
    # The saved model takes grey levels 0..255, as users give it: the test split's original pixels.
    test_split = load_pixels(project.prepared_dir, "test")
    inputs = scores.input_record(project)
    test = scores.score(model, test_split)
    train_metrics = trained_model.read_train_metrics(project)
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
        "hardware": scores.hardware(),
    }
    model_outputs.write(
        project.model_outputs_file,
        model_outputs.compute(model, test_split, test["probabilities"], inputs["model"]["sha256"]),
    )
    write_json_atomic(project.metrics_file, report)
    write_json_atomic(project.evaluate_dir / "inputs.json", inputs)
    write_text_atomic(project.evaluate_dir / "per_class.csv", records.csv_text(test["per_class"]))
    pairs = [
        {"actual": CLASS_NAMES[actual], "predicted": CLASS_NAMES[predicted]}
        for actual, predicted in zip(test_split.labels, test["predicted"], strict=True)
    ]
    write_text_atomic(project.evaluate_dir / "confusion.csv", records.csv_text(pairs))
    figure = plotting.plot_confusion_matrix(test["confusion"], CLASS_NAMES)
    plotting.save_figure(figure, project.figures_dir / "confusion_matrix.png")

    record.metrics(
        {
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "test_macro_f1": report["test"]["macro_f1"],
            **{
                f"test_f1.{row['class'].replace('/', '_').replace(' ', '_')}": row["f1"]
                for row in test["per_class"]
            },
        }
    )
    record.dataset(test_split.images, test_split.labels, "fashion-mnist-test", "testing")
    record.tags({f"evaluate.{name}_sha256": file["sha256"] for name, file in inputs.items()})
    record.artifacts(
        [
            project.evaluate_dir / "inputs.json",
            project.evaluate_dir / "per_class.csv",
            project.figures_dir / "confusion_matrix.png",
            project.metrics_file,
        ],
        "evaluate",
    )
    registered = registry.register_active_run(
        {
            "test_accuracy": str(report["test"]["accuracy"]),
            registry.VALIDATION_TAG: str(report["validation"]["accuracy"]),
            "train_data_sha256": records.sha256(project.prepared_dir / "train.npz"),
            "test_data_sha256": inputs["test_split"]["sha256"],
            "model_sha256": inputs["model"]["sha256"],
        }
    )
    print(registered, flush=True)
    return report


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.stages.evaluate`."""
    with trained_model.model_run(project, config, "evaluate"):
        report = evaluate(project)
    print(f"test accuracy {report['test']['accuracy']:.4f}, loss {report['test']['loss']:.4f}")


if __name__ == "__main__":
    main()
