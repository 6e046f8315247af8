"""`make compare`: the latest runs side by side, only the params that differ."""

from __future__ import annotations

import json
import os
import urllib.parse

import mlflow
import pytest

from fashion_cnn.tools import compare


def log_run(name: str, optimizer: str, accuracy: float) -> None:
    """A finished run with the params and metrics the train and evaluate stages log."""
    with mlflow.start_run(run_name=name):
        mlflow.log_params({"train.optimizer": optimizer, "model.name": "seed_cnn", "seed": 42})
        mlflow.log_metrics({"test_accuracy": accuracy, "val_accuracy": accuracy, "seconds_per_epoch": 1.5})


def test_compare_shows_the_params_that_differ_newest_first(repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("fashion-cnn")
    log_run("first", "nadam", 0.9049)
    log_run("second", "adam", 0.9117)

    assert compare.main(["--last", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert "train.optimizer" in header and "test_accuracy" in header
    assert "model.name" not in header and "seed" not in header  # the same in both runs
    assert lines[1].split()[:2] == ["second", "FINISHED"]
    assert "adam" in lines[1] and "0.9117" in lines[1]
    assert "nadam" in lines[2]
    # A ready compare view of exactly these runs.
    url = lines[-1].rsplit(" ", 1)[-1]
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?")
    query = urllib.parse.parse_qs(url.split("?", 1)[1])
    run_ids = mlflow.search_runs(experiment_names=["fashion-cnn"])["run_id"].tolist()
    assert sorted(json.loads(query["runs"][0])) == sorted(run_ids)
    assert json.loads(query["experiments"][0]) == [mlflow.get_experiment_by_name("fashion-cnn").experiment_id]


def test_compare_without_runs_is_a_one_line_error(repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    assert compare.main([]) == 1
    # MLflow itself logs that it creates the empty store; our message is the one "error:" line.
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: no runs in MLflow experiment 'fashion-cnn'")


def test_compare_rejects_a_non_positive_count():
    with pytest.raises(SystemExit):
        compare.main(["--last", "0"])
