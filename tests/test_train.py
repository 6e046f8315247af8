"""Tiny real training runs through the real train and evaluate entry points, read back from MLflow."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml
from conftest import tiny_arrays
from stage_runner import StageResult, run_stage, stage_command

from fashion_cnn.data import splits as data
from fashion_cnn.evaluation import scores
from fashion_cnn.serving import classifier
from fashion_cnn.training import trained_model
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import progress, quiet

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["model=small_cnn", "train.epochs=2", "train.batch_size=32"]

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp copy of the project with tiny prepared data and its own MLflow SQLite store."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "conf", project / "conf")
    raw_config = ProjectConfig.from_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    data_config = raw_config.data.model_copy(update={"validation_size": 200})
    splits, mean, std = data.split_and_standardize(*tiny_arrays(), data_config)
    data.save_prepared(project / "data" / "prepared", splits, mean, std)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("FASHION_CNN_ROOT", raising=False)
    # An earlier in-process test may have set MLflow's global URI; this test reads its own store.
    mlflow.set_tracking_uri(uri)
    return project


def checked(result: StageResult) -> StageResult:
    """Fail with the stage's output when it exited non-zero."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def long_training_until(project: Path, line_start: str) -> subprocess.Popen:
    """A 200-epoch training run in its own process, returned once it printed a line starting so."""
    process = subprocess.Popen(
        stage_command("train", *TINY_RUN, "train.epochs=200"),
        cwd=project, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in process.stdout:
        if line.startswith(line_start):
            break
    return process


def test_train_and_evaluate_log_one_complete_run(tiny_project: Path):
    trained = checked(run_stage("train", *TINY_RUN, cwd=tiny_project, timeout=600))
    assert trained.stdout.count("epoch ") == 2, trained.stdout
    assert "on CPU" in trained.stdout
    checked(run_stage("evaluate", *TINY_RUN, cwd=tiny_project, timeout=600))

    run_id = json.loads((tiny_project / "data/model/mlflow_run.json").read_text())["run_id"]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("small_cnn")
    assert run.data.params["model.layers.0.filters"] == "16"
    assert run.data.params["train.optimizer"] == "nadam"
    assert run.data.params["model.summary"].startswith("conv16x5-maxpool2")
    # Read back from the running model, not copied from params.
    assert run.data.params["runtime.device"] == "CPU"
    assert run.data.params["runtime.jit_compile"] == "False"
    assert run.data.params["runtime.deterministic"] == "True"
    assert run.data.params["runtime.dtype_policy"] == "float32"
    assert "hydra.overrides" in run.data.tags
    history = mlflow.MlflowClient().get_metric_history(run_id, "val_accuracy")
    assert [point.step for point in history] == [1, 2]
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    assert "test_f1.T-shirt_top" in run.data.metrics

    metrics = json.loads((tiny_project / "reports/metrics.json").read_text())
    assert metrics["test"]["accuracy"] == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-4)
    assert metrics["test"]["images"] == 300
    assert set(metrics["f1"]) >= {"Trouser", "Ankle boot"}
    history_csv = (tiny_project / "reports/train/history.csv").read_text().splitlines()
    assert history_csv[0] == "epoch,objective,loss,accuracy,val_loss,val_accuracy,epoch_seconds"
    assert len(history_csv) == 3
    confusion_rows = (tiny_project / "reports/evaluate/confusion.csv").read_text().splitlines()
    assert len(confusion_rows) == 301
    assert (tiny_project / "reports/figures/confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    inputs = json.loads((tiny_project / "reports/evaluate/inputs.json").read_text())
    model_bytes = (tiny_project / "data/model/model.keras").read_bytes()
    assert inputs["model"] == {
        "path": "data/model/model.keras",
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
    }
    assert run.data.tags["evaluate.test_split_sha256"] == inputs["test_split"]["sha256"]

    # The logged model takes raw pixels, as its signature and input example say, and answers what
    # predict and serve answer (the same model file, loaded through the project's checks).
    logged = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    pixels = data.load_pixels(tiny_project / "data/prepared", "test").images[:50]  # (50, 28, 28, 1), 0..255
    assert pixels.max() > 200
    project_model = classifier.load_classifier(tiny_project / "data/model/model.keras")
    expected = project_model.probabilities(pixels[..., 0])
    np.testing.assert_allclose(np.asarray(logged.predict(pixels)), expected, atol=1e-5)
    inputs_schema = logged.metadata.get_input_schema().inputs[0]
    assert tuple(inputs_schema.shape) == (-1, 28, 28, 1)
    example = logged.metadata.load_input_example(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model"))
    assert np.asarray(example).max() > 100  # grey levels, not standardized values
    # The standardization is the model's first layer: fed standardized images, it would be wrong.
    standardized = data.load_split(tiny_project / "data/prepared", "test").images[:50]
    assert not np.allclose(np.asarray(logged.predict(standardized)), expected, atol=1e-2)

    # Evaluate registered the run's model as a version of the experiment's registered model.
    experiment = mlflow.get_experiment(run.info.experiment_id).name
    [version] = mlflow.MlflowClient().search_model_versions(f"name = '{experiment}'")
    assert version.run_id == run_id
    assert version.tags["test_accuracy"] == str(metrics["test"]["accuracy"])
    assert version.tags["validation_accuracy"] == str(metrics["validation"]["accuracy"])
    assert version.tags["model_sha256"] == inputs["model"]["sha256"]
    prepared_train = (tiny_project / "data/prepared/train.npz").read_bytes()
    assert version.tags["train_data_sha256"] == hashlib.sha256(prepared_train).hexdigest()
    # Evaluating again keeps one version per run.
    checked(run_stage("evaluate", *TINY_RUN, cwd=tiny_project, timeout=600))
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{version.name}'")) == 1


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(tiny_project: Path):
    def history_after(*overrides: str) -> str:
        checked(run_stage("train", *TINY_RUN, *overrides, cwd=tiny_project, timeout=600))
        rows = (tiny_project / "reports/train/history.csv").read_text().splitlines()
        # Everything but the wall-clock column.
        return "\n".join(row.rsplit(",", 1)[0] for row in rows)

    def inter_op_threads_used() -> str:
        run_id = json.loads((tiny_project / "data/model/mlflow_run.json").read_text())["run_id"]
        return mlflow.MlflowClient().get_run(run_id).data.params["runtime.inter_op_threads"]

    first = history_after()
    assert inter_op_threads_used() == "0"
    assert history_after() == first
    assert history_after("seed=7") != first
    # One op at a time is a speed setting only: the numbers stay the same.
    assert history_after("train.inter_op_threads=1") == first
    assert inter_op_threads_used() == "1"


def latest_train_run() -> Any:
    """The newest run of the train stage in the test's store (a failed one leaves no mlflow_run.json)."""
    client = mlflow.MlflowClient()
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(experiment_ids, "tags.stage = 'train'", order_by=["attributes.start_time DESC"])
    return runs[0]


def test_diverging_loss_stops_with_a_clear_error(tiny_project: Path):
    result = run_stage(
        "train", *TINY_RUN, "train.optimizer=sgd", "train.learning_rate=1e9", cwd=tiny_project, timeout=600
    )
    assert result.returncode == 1
    assert "training diverged: the loss became nan in epoch 1" in result.stderr
    assert latest_train_run().info.status == "FAILED"
    # No model, and no record pointing at the failed run.
    assert not (tiny_project / "data/model/model.keras").exists()
    assert not (tiny_project / "data/model/mlflow_run.json").exists()


def test_sigterm_during_training_ends_the_run_killed_and_writes_no_model(tiny_project: Path):
    process = long_training_until(tiny_project, "epoch 1/200")
    try:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    assert latest_train_run().info.status == "KILLED"
    assert not (tiny_project / "data/model/model.keras").exists()
    assert not (tiny_project / "data/model/mlflow_run.json").exists()
    assert not list((tiny_project / "data/model").glob(".model.keras.*"))


def test_validation_and_test_loss_are_the_same_plain_cross_entropy(tiny_project: Path):
    # With label smoothing the training objective differs from cross-entropy; the reported
    # validation loss must not: it is what evaluate computes, on the validation split.
    checked(run_stage("train", *TINY_RUN, "train.label_smoothing=0.2", cwd=tiny_project, timeout=600))
    rows = list(csv.DictReader((tiny_project / "reports/train/history.csv").open()))
    assert float(rows[-1]["objective"]) > float(rows[-1]["loss"]) + 0.05
    model = trained_model.load_model(tiny_project / "data/model/model.keras")
    validation = data.load_pixels(tiny_project / "data/prepared", "validation")  # what the model takes
    scored = scores.score(model, validation)
    assert float(rows[-1]["val_loss"]) == pytest.approx(scored["loss"], abs=2e-3)
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(scored["accuracy"], abs=1e-6)


def test_xla_is_logged_as_it_ran(tiny_project: Path):
    result = checked(run_stage("train", *TINY_RUN, "train.epochs=1", "train.jit_compile=on",
                               "train.deterministic=false", cwd=tiny_project, timeout=600))  # fmt: skip
    assert "XLA on" in result.stdout and "deterministic ops off" in result.stdout
    run_id = json.loads((tiny_project / "data/model/mlflow_run.json").read_text())["run_id"]
    params = mlflow.MlflowClient().get_run(run_id).data.params
    assert (params["runtime.jit_compile"], params["runtime.deterministic"]) == ("True", "False")


def test_contradictory_or_misfitting_settings_stop_before_any_run(tiny_project: Path):
    # 600 training images in batches of 32 make 19 steps per epoch: 4 does not divide them.
    cases = {
        ("train.jit_compile=on",): "train.jit_compile = 'on' contradicts train.deterministic = true",
        ("train.steps_per_execution=4",): "does not divide the 19 steps of an epoch (Keras would shift "
        "every epoch's batches); nearest values that do: 1 or 19",
        # Terabytes of activations: stopped before any run, saying estimated against available.
        ("train.batch_size=10000000",): "(estimated) but only",
    }
    for overrides, expected in cases.items():
        result = run_stage("train", *TINY_RUN, *overrides, cwd=tiny_project, timeout=600)
        assert result.returncode == 1, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
        assert not (tiny_project / "data/model").exists()
    # No MLflow run was started for either.
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_evaluate_follows_the_trained_model_not_the_current_params(tiny_project: Path):
    # A preset that logs to its own experiment, then evaluate with the default params (seed_cnn).
    checked(
        run_stage("train", *TINY_RUN, "tracking.experiment_name=preset-runs", cwd=tiny_project, timeout=600)
    )
    result = checked(run_stage("evaluate", cwd=tiny_project, timeout=600))
    assert "note: data/model was trained with other settings" in result.stdout
    assert "model.layers.0.filters = 16 (params now: 64)" in result.stdout
    assert "using the model as trained (model 'small_cnn')" in result.stdout
    run_id = json.loads((tiny_project / "data/model/mlflow_run.json").read_text())["run_id"]
    run = mlflow.MlflowClient().get_run(run_id)
    assert mlflow.get_experiment(run.info.experiment_id).name == "preset-runs"
    assert "test_accuracy" in run.data.metrics


def test_output_is_quiet_shows_progress_and_everything_comes_back_on_request(
    tiny_project: Path, monkeypatch: pytest.MonkeyPatch
):
    # A progress line as often as possible (the default is at most one per 30 s).
    monkeypatch.setenv(progress.INTERVAL_ENV_VAR, "0")
    for stage in ("train", "evaluate"):
        result = checked(run_stage(stage, *TINY_RUN, cwd=tiny_project, timeout=600))
        lines = (result.stdout + result.stderr).splitlines()
        assert [line for line in lines if quiet.is_noise(line) or "\x1b[" in line] == [], stage
    progress_line = r"^epoch 1/2: step \d+/19 \(\d+%\), [\d,.]+ images/s, ETA \w+, run ETA \w+$"
    assert re.search(progress_line, run_stage("train", *TINY_RUN, cwd=tiny_project, timeout=600).stdout, re.M)
    monkeypatch.setenv(quiet.VERBOSE_ENV_VAR, "1")
    verbose = checked(run_stage("evaluate", *TINY_RUN, cwd=tiny_project, timeout=600))
    assert any(quiet.is_noise(line) for line in (verbose.stdout + verbose.stderr).splitlines())


def test_a_second_training_run_in_the_same_checkout_stops_with_one_line(tiny_project: Path):
    first = long_training_until(tiny_project, "running on ")
    try:
        second = run_stage("train", *TINY_RUN, cwd=tiny_project, timeout=600)
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert second.returncode == 1
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data/train.lock: another training run in this checkout" in errors[0]
    assert f"pid {first.pid}" in errors[0]
    # Once the first is gone, the lock goes with it.
    checked(run_stage("train", *TINY_RUN, "train.epochs=1", cwd=tiny_project, timeout=600))
