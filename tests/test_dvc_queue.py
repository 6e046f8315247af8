"""DVC's experiment queue: queued runs execute in temporary workspaces and still land in the project's
MLflow store, each tagged with its DVC experiment name."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import needs_dataset

from fashion_cnn.utils import paths

DVC = str(Path(sys.executable).parent / "dvc")
QUEUE_TIMEOUT_SECONDS = 900

pytestmark = [
    pytest.mark.slow,
    needs_dataset,
]


def test_store_root_of_a_dvc_temporary_workspace_is_its_repository(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    assert paths.ProjectPaths(repository).mlflow_db == repository / "mlflow.db"
    workspace = repository / ".dvc" / "tmp" / "exps" / "tmpabc123"
    assert paths.ProjectPaths(workspace).mlflow_db == repository / "mlflow.db"


def test_queued_experiments_land_in_the_project_store_tagged_with_their_names(
    dvc_project: Path, run_command, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The project's own default store (mlflow.db in the root), not the tests' isolated one.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    # Stages find their root from the working directory, which DVC sets to each temporary workspace.
    monkeypatch.delenv("FASHION_CNN_ROOT")
    tiny = [
        "experiment=quick",
        "data.max_train_images=300",
        "data.max_test_images=100",
        "data.validation_size=100",
        "train.epochs=1",
    ]
    settings = [argument for item in tiny for argument in ("-S", item)]
    # A Hydra choice sweep: one queued experiment per optimizer (not sgd: at its default learning rate
    # it is still at chance after these few steps, and train refuses a model that learned nothing).
    run_command(
        [DVC, "exp", "run", "--queue", *settings, "-S", "train.optimizer=adam,nadam", "evaluate"], dvc_project
    )
    run_command([DVC, "queue", "start", "--jobs", "1"], dvc_project)

    deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
    while True:
        status = run_command([DVC, "queue", "status"], dvc_project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, (
            f"the queue did not finish in {QUEUE_TIMEOUT_SECONDS} s:\n{status}"
        )
        time.sleep(5)
    if status.count("Success") != 2:
        logs = [
            run_command([DVC, "queue", "logs", line.split()[0]], dvc_project).stdout
            for line in status.splitlines()[1:]
            if "Failed" in line
        ]
        pytest.fail(f"queued experiments failed:\n{status}\n" + "\n".join(logs)[-6000:])

    shown = json.loads(run_command([DVC, "exp", "show", "--json"], dvc_project).stdout)
    names = {
        experiment["name"]
        for commit in shown
        for experiment in (commit.get("experiments") or [])
        if experiment.get("name")
    }
    assert len(names) == 2, shown

    store = dvc_project / "mlflow.db"
    assert store.is_file(), "queued runs did not log to the project's mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("fashion-cnn")
    runs = client.search_runs([experiment.experiment_id])
    tagged = {run.data.tags.get("dvc.experiment"): run for run in runs}
    assert names <= set(tagged), (names, sorted(tagged))
    optimizers = {tagged[name].data.params["train.optimizer"] for name in names}
    assert optimizers == {"adam", "nadam"}
    # evaluate logged its test metrics into the training run of the same experiment.
    assert all("test_accuracy" in tagged[name].data.metrics for name in names)
