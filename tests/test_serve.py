"""`make serve` (python -m fashion_cnn.tools.serve): what it runs, and a one-line error without a model.

Serving a real model over HTTP is tested in test_mlflow_server.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashion_cnn import paths
from fashion_cnn.tools import serve


def test_without_a_trained_model_it_says_so_in_one_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve.main(["--port", "5999"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "mlflow_run.json: missing" in error


def test_it_serves_the_recorded_run_on_localhost_with_the_local_environment(project: Path) -> None:
    run_info = paths.project_paths().run_info_file
    run_info.parent.mkdir(parents=True)
    store = f"sqlite:///{project / 'elsewhere.db'}"
    run_info.write_text(json.dumps({"run_id": "0123abcd", "experiment_id": "1", "tracking_uri": store}))
    command, environment = serve.serve_command(paths.project_paths(), "127.0.0.1", 5123)
    assert command[1:5] == ["-m", "mlflow", "models", "serve"]
    options = dict(zip(command[5::2], command[6::2], strict=True))
    assert options == {
        "--model-uri": "runs:/0123abcd/model",
        "--env-manager": "local",
        "--host": "127.0.0.1",
        "--port": "5123",
    }
    # The run's own store, not whatever MLFLOW_TRACKING_URI says now.
    assert environment["MLFLOW_TRACKING_URI"] == store
