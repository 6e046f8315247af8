"""End to end: real `dvc repro` of download and prepare in a temp copy of the repo, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import DATASET_DIR, needs_dataset

from fashion_cnn.data import fetch, splits

pytestmark = [
    pytest.mark.slow,
    needs_dataset,
]

DVC = str(Path(sys.executable).parent / "dvc")
MAX_TRAIN_IMAGES = 2000
MAX_TEST_IMAGES = 1000
# The stages whose status is checked; the later ones (evaluate, figures) have not run here.
DATA_AND_TRAIN = ("download", "prepare", "train")


def edit_params(project: Path, edit) -> None:
    """Apply `edit(params_dict)` to the project's params.yaml."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def dvc(dvc_project: Path, run_command) -> Callable[..., subprocess.CompletedProcess[str]]:
    """dvc(*args): run the real dvc CLI in the temp project, failing the test if it fails."""
    return lambda *args: run_command([DVC, *args], dvc_project)


def test_dvc_repro_download_and_prepare(
    dvc_project: Path, dvc, git_commit, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = dvc_project

    def dvc_status(*targets: str) -> dict:
        return json.loads(dvc("status", "--json", *targets).stdout or "{}")

    def shrink(params: dict) -> None:
        # Only FASHION_CNN_MIRROR can supply the files: the configured source does not exist.
        params["data"]["sources"] = [str(project / "no-such-mirror")]
        params["data"]["max_train_images"] = MAX_TRAIN_IMAGES
        params["data"]["max_test_images"] = MAX_TEST_IMAGES

    edit_params(project, shrink)
    git_commit(project, "small, offline params")
    monkeypatch.setenv(fetch.MIRROR_ENV_VAR, str(DATASET_DIR))

    dvc("repro", "prepare")

    raw_files = sorted(path.name for path in (project / "data" / "raw").iterdir())
    assert raw_files == sorted(f"{item.name}.gz" for item in fetch.FILES)
    for name in raw_files:
        assert (project / "data" / "raw" / name).read_bytes() == (DATASET_DIR / name).read_bytes()
    prepared = project / "data" / "prepared"
    assert sorted(path.name for path in prepared.iterdir()) == [
        "standardization.npz",
        "test.npz",
        "train.npz",
        "validation.npz",
    ]
    sizes = {name: splits.load_split(prepared, name).images.shape for name in splits.SPLITS}
    assert sizes == {
        "train": (MAX_TRAIN_IMAGES, 28, 28, 1),
        "validation": (5000, 28, 28, 1),
        "test": (MAX_TEST_IMAGES, 28, 28, 1),
    }
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "prepare"}
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["data.max_train_images"] == MAX_TRAIN_IMAGES
    assert lock["stages"]["download"]["outs"][0]["nfiles"] == 4

    # Each stage logged one finished MLflow run in the store the test chose.
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["fashion-cnn-pipeline"], output_format="list")
    assert sorted((run.data.tags["stage"], run.info.status) for run in runs) == [
        ("download", "FINISHED"),
        ("prepare", "FINISHED"),
    ]

    # Nothing changed: nothing reruns.
    raw_mtime = (project / "data" / "raw" / raw_files[0]).stat().st_mtime_ns
    again = dvc("repro", "prepare")
    assert "Data and pipelines are up to date." in again.stdout
    assert (project / "data" / "raw" / raw_files[0]).stat().st_mtime_ns == raw_mtime

    # Stand in for a train run (its code is tested elsewhere): record its current deps, params and
    # placeholder outputs in dvc.lock, so the status below is about params alone.
    stand_in_train_run(project)
    dvc("commit", "--force", "train")
    git_commit(project, "pipeline run")
    assert dvc_status(*DATA_AND_TRAIN) == {}

    # A model key is a train param only: train is out of date, download and prepare are not.
    edit_params(project, lambda params: params["model"]["layers"][0].update(filters=32))
    assert dvc_status(*DATA_AND_TRAIN) == {
        "train": [{"changed deps": {"params.yaml": {"model": "modified"}}}]
    }
    diff = json.loads(dvc("params", "diff", "--json").stdout)
    layers = diff["params.yaml"]["model.layers"]
    assert "'filters': 64" in str(layers["old"]) and "'filters': 32" in str(layers["new"])

    # A prepare key reruns prepare (and what depends on its output) but not download.
    edit_params(project, lambda params: params["data"].update(validation_size=4000))
    status = dvc_status("download", "prepare")
    assert status == {"prepare": [{"changed deps": {"params.yaml": {"data.validation_size": "modified"}}}]}


def stand_in_train_run(project: Path) -> None:
    """Placeholder code and outputs of the train stage, for `dvc commit train` to record as if it had run."""
    stage = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["train"]
    for dependency in stage["deps"]:
        if dependency.startswith("src/"):
            (project / dependency).touch()
    for out in stage["outs"] + stage.get("metrics", []) + stage.get("plots", []):
        path = project / (out if isinstance(out, str) else next(iter(out)))
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix:
            path.write_text("placeholder\n")
        else:
            path.mkdir()
            (path / "placeholder").write_text("not a model\n")
