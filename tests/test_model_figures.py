"""Figures of the trained model: a tiny small_cnn, a tiny test split, what evaluate computed with the
model (model_outputs.npz) and history in a temp project."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf
from stage_runner import run_stage

from fashion_cnn import CLASS_NAMES
from fashion_cnn.config import schema
from fashion_cnn.data import splits
from fashion_cnn.errors import DataError
from fashion_cnn.evaluation import model_outputs, scores
from fashion_cnn.figures import learned, plotting
from fashion_cnn.model import architecture, standardization
from fashion_cnn.training import history, trained_model
from fashion_cnn.utils import paths, records

HISTORY_CSV = (
    "epoch,loss,accuracy,val_loss,val_accuracy,epoch_seconds\n"
    "1,1.200000,0.550000,0.900000,0.660000,3.1\n"
    "2,0.700000,0.740000,0.650000,0.760000,2.9\n"
    "3,0.550000,0.800000,0.560000,0.790000,2.9\n"
)
# small_cnn has three conv layers, named by the builder after their index in params.
EXPECTED_FIGURES = (
    "first_conv_filters",
    "feature_maps_00_conv",
    "feature_maps_02_conv",
    "feature_maps_04_conv",
    "training_curves",
    "misclassified",
)


@pytest.fixture
def model_project(project: Path, make_config) -> Path:
    """The temp project with what train and prepare leave: model.keras (behind its standardization),
    its config and MLflow run, test.npz (standardized images and the raw pixels), history."""
    project_paths = paths.ProjectPaths(project)
    keras.utils.set_random_seed(0)
    trained_config = make_config("model=small_cnn")
    generator = np.random.default_rng(0)
    mean = generator.uniform(20, 120, (1, 28, 28)).astype(np.float32)
    std = generator.uniform(40, 100, (1, 28, 28)).astype(np.float32)
    keras_model = standardization.with_standardization(
        architecture.build_model(trained_config.model), mean, std
    )
    project_paths.model_dir.mkdir(parents=True)
    keras_model.save(project_paths.model_file)
    schema.save_resolved(trained_config, project_paths.model_dir / "config.yaml")
    pixels = generator.integers(0, 256, (30, 28, 28)).astype(np.uint8)  # (30, 28, 28), grey levels
    images = ((pixels - mean) / std)[..., np.newaxis]  # (30, 28, 28, 1) float32, standardized as prepare does
    labels = (np.arange(30) % 10).astype(np.uint8)
    splits.save_npz(project_paths.prepared_dir / "test.npz", images=images, labels=labels, pixels=pixels)
    project_paths.history_file.parent.mkdir(parents=True)
    project_paths.history_file.write_text(HISTORY_CSV)
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment_id = client.create_experiment(
        "fashion-cnn", artifact_location=(project / "mlartifacts").as_uri()
    )
    run = client.create_run(experiment_id, run_name="train")
    client.set_terminated(run.info.run_id)
    trained_model.write_run_info(project_paths, run)
    return project


def evaluate_outputs(project: Path) -> model_outputs.ModelOutputs:
    """What the evaluate stage computes for model_figures, through its own functions, written where it
    writes it."""
    project_paths = paths.ProjectPaths(project)
    trained = trained_model.load_model(project_paths.model_file)
    # As evaluate does: the saved model takes the test split's raw pixels.
    test = splits.load_pixels(project_paths.prepared_dir, "test")
    probabilities = scores.score(trained, test)["probabilities"]
    outputs = model_outputs.compute(trained, test, probabilities, records.sha256(project_paths.model_file))
    model_outputs.write(project_paths.model_outputs_file, outputs)
    return outputs


def load_inputs(project: Path) -> tuple[model_outputs.ModelOutputs, splits.Split, list[dict[str, float]]]:
    """What the stage reads, through the stage's own loaders."""
    project_paths = paths.ProjectPaths(project)
    test = splits.load_split(project_paths.prepared_dir, "test")
    return (
        model_outputs.read(project_paths.model_outputs_file, test, project_paths.model_file),
        test,
        history.read_history(project_paths.history_file),
    )


def test_conv_outputs_equal_the_layer_math(model_project: Path) -> None:
    project_paths = paths.ProjectPaths(model_project)
    trained = trained_model.load_model(project_paths.model_file)
    pixels = splits.load_pixels(project_paths.prepared_dir, "test").images[:3]  # what evaluate gives it
    # The layers run from the standardization: the first conv layer sees the standardized images.
    images = splits.load_split(project_paths.prepared_dir, "test").images[:3]
    outputs = model_outputs.conv_outputs(trained, pixels)
    conv_layers = model_outputs.conv_layers(trained)
    assert [output.shape[-1] for output in outputs] == [layer.filters for layer in conv_layers]
    first = conv_layers[0]
    expected = tf.nn.relu(tf.nn.conv2d(images, first.kernel, strides=1, padding="SAME") + first.bias).numpy()
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-5, atol=1e-5)


def test_model_outputs_round_trip_and_match_the_model(model_project: Path) -> None:
    written = evaluate_outputs(model_project)
    read, test, _ = load_inputs(model_project)
    assert read.conv_names == written.conv_names == ["00_conv", "02_conv", "04_conv"]
    assert read.probabilities.shape == (len(test.labels), 10)
    np.testing.assert_array_equal(read.probabilities.argmax(axis=1), written.probabilities.argmax(axis=1))
    assert test.labels[read.class_indices].tolist() == list(range(10))
    for maps, filters in zip(read.feature_maps, (16, 32, 64), strict=True):
        assert maps.shape[0] == 10 and maps.shape[-1] == filters


def test_model_outputs_of_another_model_are_refused(model_project: Path, make_config) -> None:
    evaluate_outputs(model_project)
    project_paths = paths.ProjectPaths(model_project)
    keras.utils.set_random_seed(1)  # other initial weights: another run of the same config
    architecture.build_model(make_config("model=small_cnn").model).save(project_paths.model_file)
    test = splits.load_split(project_paths.prepared_dir, "test")
    with pytest.raises(DataError, match="different runs.*dvc repro evaluate"):
        model_outputs.read(project_paths.model_outputs_file, test, project_paths.model_file)


def test_one_image_per_class_takes_the_first_of_each() -> None:
    labels = np.array([3, 1, 3, 0, 1], dtype=np.uint8)
    assert model_outputs.one_image_per_class(labels).tolist() == [3, 1, 0]


def test_read_history_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing"):
        history.read_history(tmp_path / "history.csv")
    (tmp_path / "history.csv").write_text("epoch,loss,accuracy\n1,0.5,0.8\n")
    with pytest.raises(DataError, match="val_loss"):
        history.read_history(tmp_path / "history.csv")
    (tmp_path / "history.csv").write_text(HISTORY_CSV.replace("0.740000", "n/a"))
    with pytest.raises(DataError, match="not a number"):
        history.read_history(tmp_path / "history.csv")


def test_missing_model_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dvc repro train"):
        trained_model.load_model(tmp_path / "model.keras")


def test_misclassified_figure_counts_the_mistakes() -> None:
    labels = np.array([0, 1, 2, 3], dtype=np.uint8)
    probabilities = np.eye(10, dtype=np.float32)[[0, 2, 2, 5]]  # images 1 and 3 are wrong
    figure = learned.misclassified_figure(np.zeros((4, 28, 28, 1), np.float32), labels, probabilities)
    assert "2 of 4 (50.0%)" in figure.get_suptitle()
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert titles == [
        f"true: {CLASS_NAMES[1]}\npredicted: {CLASS_NAMES[2]} (100%)",
        f"true: {CLASS_NAMES[3]}\npredicted: {CLASS_NAMES[5]} (100%)",
    ]


def test_confusion_matrix_figure(tmp_path: Path, png_check) -> None:
    matrix = np.diag(np.arange(10, 20))
    figure = plotting.plot_confusion_matrix(matrix, CLASS_NAMES)
    axes = figure.axes[0]
    assert axes.get_xlabel() == "Predicted label" and axes.get_ylabel() == "True label"
    assert [label.get_text() for label in axes.get_yticklabels()] == list(CLASS_NAMES)
    assert len(figure.axes) == 2, "a colorbar"
    assert {text.get_text() for text in axes.texts} >= {"10", "19", "0"}
    plotting.save_figure(figure, tmp_path / "confusion.png")
    png_check(tmp_path / "confusion.png")
    with pytest.raises(ValueError, match="expected \\(10, 10\\)"):
        plotting.plot_confusion_matrix(np.zeros((3, 3)), CLASS_NAMES)


def test_training_curves_need_the_history_columns() -> None:
    with pytest.raises(ValueError, match="val_accuracy"):
        plotting.plot_training_curves([{"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0}])
    with pytest.raises(ValueError, match="empty"):
        plotting.plot_training_curves([])


@pytest.mark.slow
def test_stage_writes_every_figure_logs_them_to_the_model_run_and_is_byte_stable(
    model_project: Path, tmp_path: Path, png_check
) -> None:
    evaluate_outputs(model_project)
    result = run_stage("model_figures", cwd=model_project)
    assert result.returncode == 0, result.stderr[-2000:]
    output_dir = model_project / "reports" / "figures" / "model"
    expected = sorted(f"{name}.png" for name in EXPECTED_FIGURES)
    assert sorted(path.name for path in output_dir.iterdir()) == expected
    for path in output_dir.iterdir():
        png_check(path)

    rerendered = learned.render_model_figures(*load_inputs(model_project), tmp_path / "again")
    for path in rerendered:
        assert path.read_bytes() == (output_dir / path.name).read_bytes(), f"{path.name} differs between runs"

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_id = trained_model.read_training_run(paths.ProjectPaths(model_project)).run_id
    logged = sorted(Path(item.path).name for item in client.list_artifacts(run_id, "figures/model"))
    assert logged == expected
    assert client.get_run(run_id).data.tags["stage.model_figures"] == "done"


def test_stage_without_what_evaluate_computed_fails_in_one_line(model_project: Path) -> None:
    result = run_stage("model_figures", cwd=model_project)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    assert "model_outputs.npz: missing" in result.stderr and "dvc repro evaluate" in result.stderr
    assert "Traceback" not in result.stderr
