"""Tiny real training runs through the real train and evaluate entry points, read back from MLflow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from conftest import tiny_arrays

from fashion_cnn import config as config_module
from fashion_cnn import data, prepare

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
    raw_config = config_module.validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    data_config = raw_config.data.model_copy(update={"validation_size": 200})
    splits, mean, std = prepare.split_and_standardize(*tiny_arrays(), data_config)
    for name, split in splits.items():
        data.save_npz(project / "data" / "prepared" / f"{name}.npz", images=split.images, labels=split.labels)
    data.save_npz(project / "data" / "prepared" / data.STATS_FILE, mean=mean, std=std)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("FASHION_CNN_ROOT", raising=False)
    # An earlier in-process test may have set MLflow's global URI; this test reads its own store.
    mlflow.set_tracking_uri(uri)
    return project


def run_stage(project: Path, stage: str, *overrides: str) -> subprocess.CompletedProcess:
    """Run `python -m fashion_cnn.<stage> overrides...` in the project, as DVC would."""
    return subprocess.run(
        [sys.executable, "-m", f"fashion_cnn.{stage}", *overrides],
        cwd=project,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def checked(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Fail with the stage's output when it exited non-zero."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_train_and_evaluate_log_one_complete_run(tiny_project: Path):
    trained = checked(run_stage(tiny_project, "train", *TINY_RUN))
    assert trained.stdout.count("epoch ") == 2, trained.stdout
    assert "on CPU" in trained.stdout
    checked(run_stage(tiny_project, "evaluate", *TINY_RUN))

    run_id = json.loads((tiny_project / "data/model/mlflow_run.json").read_text())["run_id"]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("small_cnn")
    assert run.data.params["model.layers.0.filters"] == "16"
    assert run.data.params["train.optimizer"] == "nadam"
    assert run.data.params["model.summary"].startswith("conv16x5-maxpool2")
    assert run.data.tags["device"] == "CPU"
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
    assert history_csv[0] == "epoch,loss,accuracy,val_loss,val_accuracy,epoch_seconds"
    assert len(history_csv) == 3
    confusion_rows = (tiny_project / "reports/evaluate/confusion.csv").read_text().splitlines()
    assert len(confusion_rows) == 301
    assert (tiny_project / "reports/figures/confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    logged = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    test_images = data.load_split(tiny_project / "data/prepared", "test").images[:2]
    assert np.asarray(logged.predict(test_images)).shape == (2, 10)


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(tiny_project: Path):
    def history_after(*overrides: str) -> str:
        checked(run_stage(tiny_project, "train", *TINY_RUN, *overrides))
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


def test_diverging_loss_stops_with_a_clear_error(tiny_project: Path):
    result = run_stage(tiny_project, "train", *TINY_RUN, "train.optimizer=sgd", "train.learning_rate=1e9")
    assert result.returncode == 1
    assert "training diverged: the loss became nan in epoch 1" in result.stderr
    run_id = json.loads((tiny_project / "data/model/mlflow_run.json").read_text())["run_id"]
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FAILED"
    assert not (tiny_project / "data/model/model.keras").exists()


def test_gpu_requested_without_one_is_an_error_not_a_silent_cpu_run(tiny_project: Path):
    result = run_stage(tiny_project, "train", *TINY_RUN, "train.device=gpu")
    assert result.returncode == 1
    assert "train.device = 'gpu'" in result.stderr
    assert "no GPU" in result.stderr
    assert not (tiny_project / "data/model/model.keras").exists()


def test_sigterm_during_training_ends_the_run_killed_and_writes_no_model(tiny_project: Path):
    process = subprocess.Popen(
        [sys.executable, "-m", "fashion_cnn.train", *TINY_RUN, "train.epochs=200"],
        cwd=tiny_project, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in process.stdout:
            if line.startswith("epoch 1/200"):
                break
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    run_id = json.loads((tiny_project / "data/model/mlflow_run.json").read_text())["run_id"]
    assert mlflow.MlflowClient().get_run(run_id).info.status == "KILLED"
    assert not (tiny_project / "data/model/model.keras").exists()
    assert not list((tiny_project / "data/model").glob(".model.keras.*"))
