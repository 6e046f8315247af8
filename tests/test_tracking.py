"""MLflow wiring: logging that survives a failing store, Hydra sweeps grouped under a parent run, and
experiments the UI opens on their runs table."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from stage_runner import run_stage

from fashion_cnn import errors
from fashion_cnn.tools import ui
from fashion_cnn.tracking import faults as server
from fashion_cnn.tracking import keras_model
from fashion_cnn.tracking import runs as tracking
from fashion_cnn.utils import paths

# ---- logging calls that fail ----


def test_a_failed_call_on_a_local_store_is_recorded_and_the_next_call_still_made(tmp_path: Path) -> None:
    failures = server.LoggingFailures(f"sqlite:///{tmp_path / 'mlflow.db'}")
    missing = tmp_path / "no-such-report.csv"

    def log_artifact(path: str) -> None:
        Path(path).read_bytes()  # What mlflow.log_artifact does first: FileNotFoundError.

    assert failures.call(log_artifact, str(missing)) is None
    assert failures.call(lambda value: value * 2, 21) == 42
    assert not failures.server_gone
    summary = failures.summary()
    assert summary.startswith("warning: 1 MLflow logging call(s)") and "\n" not in summary
    assert "(log_artifact)" in summary and str(missing) in summary


def test_a_bug_in_a_logging_call_is_not_swallowed() -> None:
    with pytest.raises(ZeroDivisionError):
        server.LoggingFailures().call(lambda: 1 / 0)


def test_no_warning_when_every_call_succeeded() -> None:
    failures = server.LoggingFailures("sqlite:///unused.db")
    assert failures.call(lambda value: value * 2, 21) == 42
    assert failures.summary() == ""


def tiny_keras_model():  # -> keras.Model
    """A model of the project's input and output shapes, small enough to save in a moment."""
    import keras

    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))


def test_mlflow_keras_still_needs_the_model_folder_workaround(tmp_path: Path) -> None:
    """tracking/keras_model.py wraps MLflow's private _save_example (mlflow#16183). This fails when MLflow
    renames it or changes its arguments, or fixes the bug: then delete the workaround."""
    import inspect

    import mlflow.keras.save
    import numpy as np

    parameters = tuple(inspect.signature(mlflow.keras.save._save_example).parameters)
    assert parameters[: len(keras_model.PATCHED_ARGUMENTS)] == keras_model.PATCHED_ARGUMENTS
    model, example = tiny_keras_model(), np.zeros((2, 28, 28, 1), np.float32)
    # The bug: the input example is written before the model folder is made.
    with pytest.raises(FileNotFoundError):
        mlflow.keras.save_model(model, str(tmp_path / "without"), input_example=example)
    original = mlflow.keras.save._save_example
    with keras_model._model_folder_created_first():
        mlflow.keras.save_model(model, str(tmp_path / "with"), input_example=example)
    assert (tmp_path / "with" / "input_example.json").is_file()
    # Restored after the block: nothing else in the process sees the wrapper.
    assert mlflow.keras.save._save_example is original


# ---- Hydra multirun: one parent run per sweep ----


@pytest.mark.slow
def test_multirun_gives_one_child_run_per_job_under_one_parent_run(
    dvc_project: Path, synthetic_prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(synthetic_prepared, dvc_project / "data" / "prepared")
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-sweep")
    sweep = ["train.optimizer=adam,sgd", "model=small_cnn", "train.epochs=1"]
    result = run_stage("train", "-m", *sweep, cwd=dvc_project, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "database is locked" not in output

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("fashion-cnn")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("sweep") == "parent"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert parent.info.run_name == "sweep " + " ".join(sweep)
    assert {run.info.status for run in runs} == {"FINISHED"}

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=dvc_project, capture_output=True, text=True, check=True
    ).stdout.strip()
    optimizers = sorted(child.data.params["train.optimizer"] for child in children)
    assert optimizers == ["adam", "sgd"]
    for child in children:
        optimizer = child.data.params["train.optimizer"]
        assert f"train.optimizer={optimizer}" in child.data.tags["hydra.overrides"]
        assert f"train.optimizer={optimizer}" in child.info.run_name
        assert child.info.run_name.endswith("(dvc exp tiny-sweep)")
        assert child.data.tags["dvc.experiment"] == "tiny-sweep"
        assert child.data.tags["git.commit"] == commit
    assert len({child.info.run_name for child in children}) == 2


# ---- the UI opens on the runs table ----


def test_experiments_are_marked_as_model_training_new_or_old(project: Path) -> None:
    project_paths = paths.ProjectPaths(project)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    # An experiment created before the tag existed (or by MLflow itself) gets it too.
    old_id = mlflow.create_experiment("fashion-cnn-pipeline")
    assert tracking.EXPERIMENT_KIND_TAG not in mlflow.get_experiment(old_id).tags
    lines = ui.runs_table_lines(project_paths, "http://127.0.0.1:5000")
    for name in ("fashion-cnn", "fashion-cnn-pipeline"):
        experiment = mlflow.get_experiment_by_name(name)
        assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
        page = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
        assert f"{name}: {page}?workflowType=machine_learning" in lines
    assert mlflow.get_experiment_by_name("fashion-cnn-pipeline").experiment_id == old_id


def test_the_ui_server_listens_on_loopback_over_the_projects_store(project: Path) -> None:
    command = ui.server_command(paths.ProjectPaths(project), 5002)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5002"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{project / 'mlflow.db'}"


# ---- a tracking server that answers with an error is not healthy ----


class StatusHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's status (200 with an empty JSON object when OK)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name.
        status = self.server.status  # type: ignore[attr-defined]
        if self.path.startswith("/health") and self.server.without_health:  # type: ignore[attr-defined]
            status = 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *arguments: object) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[http.server.ThreadingHTTPServer]:
    """A real HTTP server on 127.0.0.1 whose answer the test sets (server.status, server.without_health)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StatusHandler)
    server.status, server.without_health = 200, False  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [500, 503, 401, 403])
def test_a_server_answering_an_error_is_refused_naming_the_uri_and_status(
    status_server: http.server.ThreadingHTTPServer, status: int
) -> None:
    uri = f"http://127.0.0.1:{status_server.server_address[1]}"
    status_server.status = status  # type: ignore[attr-defined]
    with pytest.raises(errors.FashionCnnError) as raised:
        server.check_server(uri)
    assert uri in str(raised.value) and f"HTTP {status}" in str(raised.value)


def test_a_healthy_server_passes_with_or_without_a_health_endpoint(
    status_server: http.server.ThreadingHTTPServer,
) -> None:
    uri = f"http://127.0.0.1:{status_server.server_address[1]}"
    server.check_server(uri)
    status_server.without_health = True  # type: ignore[attr-defined]
    server.check_server(uri)  # its API answers
    status_server.status = 503  # type: ignore[attr-defined]
    with pytest.raises(errors.FashionCnnError, match="HTTP 503"):
        server.check_server(uri)
