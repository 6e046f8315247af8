"""A shared DVC remote: push a tiny pipeline run, pull it into a fresh clone, and nothing retrains."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DATASET_DIR, needs_dataset

from fashion_cnn.data import fetch

DVC = str(Path(sys.executable).parent / "dvc")
# The stages whose outputs live in the DVC cache (and so on the remote); reports are committed to git.
CACHED_OUTPUTS = ("data/raw", "data/prepared", "data/model")

pytestmark = [
    pytest.mark.slow,
    needs_dataset,
]


def tiny_quick_params(project: Path) -> None:
    """The quick preset (as `dvc exp run -S experiment=quick` writes it), shrunk to seconds of training."""
    from dvc.utils.hydra import compose_and_dump

    params_file = project / "params.yaml"
    compose_and_dump(params_file, str(project / "conf"), None, "config", "", ["experiment=quick"])
    params = yaml.safe_load(params_file.read_text())
    params["data"].update(max_train_images=500, max_test_images=200, validation_size=500)
    params["train"]["epochs"] = 1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def file_digests(root: Path, folder: str) -> dict[str, bytes]:
    """Every file under root/folder with its bytes."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in (root / folder).rglob("*")
        if path.is_file()
    }


def test_dvc_push_then_pull_in_a_fresh_clone_restores_everything_without_retraining(
    dvc_project: Path, tmp_path: Path, run_command, git_commit, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = dvc_project
    monkeypatch.setenv(fetch.MIRROR_ENV_VAR, str(DATASET_DIR))
    tiny_quick_params(project)
    git_commit(project, "tiny quick params")

    run_command([DVC, "repro", "train"], project)
    git_commit(project, "pipeline run: dvc.lock and the committed reports")
    remote = tmp_path / "dvc-remote"
    run_command([DVC, "remote", "add", "-d", "storage", str(remote)], project)
    git_commit(project, "the team's DVC remote")
    pushed = run_command([DVC, "push"], project)
    assert "pushed" in pushed.stdout
    assert any(path.is_file() for path in remote.rglob("*"))

    clone = tmp_path / "clone"
    run_command(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    # The clone has the code, dvc.lock and the reports from git, but no data and no model.
    assert not (clone / "data" / "model").exists()
    assert (clone / "reports" / "train" / "metrics.json").read_text() == (
        project / "reports" / "train" / "metrics.json"
    ).read_text()
    # Its own MLflow store: a training run would show up here.
    clone_store = tmp_path / "clone-mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{clone_store}")
    monkeypatch.delenv("FASHION_CNN_ROOT")
    # No mirror either: a download would fail.
    monkeypatch.delenv(fetch.MIRROR_ENV_VAR)

    # What `dvc repro train` made: train's outputs and its upstream stages' (the later stages' entries in
    # dvc.lock are the committed ones, not of this run).
    run_command([DVC, "pull", "--with-deps", "train"], clone)
    for folder in CACHED_OUTPUTS:
        assert file_digests(clone, folder) == file_digests(project, folder), folder
    model_mtime = (clone / "data" / "model" / "model.keras").stat().st_mtime_ns

    status = json.loads(run_command([DVC, "status", "--json", "train"], clone).stdout or "{}")
    assert status == {}
    repro = run_command([DVC, "repro", "train"], clone)
    assert "Running stage" not in repro.stdout
    assert "up to date" in repro.stdout
    assert (clone / "data" / "model" / "model.keras").stat().st_mtime_ns == model_mtime
    assert not clone_store.exists()
