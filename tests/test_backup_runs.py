"""The run history's backup (make backup-runs) and the restore docs/tracking.md describes, with real
MLflow: a run logged, backed up, its store filled with garbage, restored and read back whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_tracking_store import garbage, log_a_run

from fashion_cnn.errors import DataError
from fashion_cnn.tools import backup_runs
from fashion_cnn.tracking import store

# A run as MLflow reads it back: status, params, metrics and the artifact's text, as JSON.
READ_BACK = (
    "import json, sys, mlflow\n"
    "run = mlflow.MlflowClient(tracking_uri=sys.argv[1]).get_run(sys.argv[2])\n"
    "notes = mlflow.artifacts.load_text(run.info.artifact_uri + '/notes.txt')\n"
    "print(json.dumps({'status': run.info.status, 'params': run.data.params,\n"
    "                  'metrics': run.data.metrics, 'notes': notes}))\n"
)


@pytest.mark.reliability(
    case="mlflow.db backed up (make backup-runs), damaged, restored",
    sees="the runs, metrics and artifacts back, as MLflow reads them",
)
def test_the_run_history_backed_up_damaged_and_restored_is_whole(tmp_path: Path) -> None:
    """docs/tracking.md's restore, step by step, with real MLflow."""
    root = tmp_path / "project"
    root.mkdir()
    database, uri = root / "mlflow.db", f"sqlite:///{root / 'mlflow.db'}"
    run_id = log_a_run(uri, root / "mlartifacts")
    backup = backup_runs.backup_runs(root, tmp_path / "backup")
    assert sorted(path.name for path in backup.iterdir()) == ["mlartifacts", "mlflow.db"]
    with pytest.raises(DataError, match="already exists"):
        backup_runs.backup_runs(root, backup)
    # The disk fails: the store is garbage, the artifacts gone.
    garbage(database)
    shutil.rmtree(root / "mlartifacts")
    with pytest.raises(DataError, match="not an SQLite database"):
        store.check_store(uri)
    # The restore of docs/tracking.md: the damaged store moved aside, the backup copied back.
    os.replace(database, root / "mlflow.db.damaged")
    shutil.copy2(backup / "mlflow.db", database)
    shutil.copytree(backup / "mlartifacts", root / "mlartifacts")
    store.check_store(uri)
    # Read back by a new process, as the next stage or `make ui` would (this one's MLflow keeps the
    # damaged file open in its connection pool).
    read_back = subprocess.run(
        [sys.executable, "-c", READ_BACK, uri, run_id],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(read_back.stdout.strip().splitlines()[-1]) == {
        "status": "FINISHED",
        "params": {"optimizer": "nadam"},
        "metrics": {"val_accuracy": 0.91},
        "notes": "what the run wrote",
    }


def test_a_damaged_store_is_not_backed_up(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        backup_runs.backup_runs(tmp_path, tmp_path / "backup")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mlflow.db"]
