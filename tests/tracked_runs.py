"""Two tiny training runs logged to a real `mlflow server`, shared by the modules that read them back
(test_mlflow_server.py: runs and UI; test_registry.py: the registered model, predict, serve and
`mlflow models serve`); and the helpers that start and wait for servers. The fixtures are session-scoped:
the runs are trained once per test session."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import DATASET_DIR, HAS_DATASET, make_synthetic_raw
from PIL import Image
from servers import VENV_BIN, MlflowServer
from stage_runner import run_stage

from fashion_cnn.data import fetch, splits
from fashion_cnn.stages import prepare
from fashion_cnn.tools import predict
from fashion_cnn.training.config import ProjectConfig

# The quick preset (small_cnn) on 1,000 training, 500 validation and 500 test images, one epoch.
TINY_DATA = {"max_train_images": 1000, "max_test_images": 500, "validation_size": 500}
TINY_RUN = [
    "experiment=quick",
    *(f"data.{key}={value}" for key, value in TINY_DATA.items()),
    "train.epochs=1",
]
# Trained in this order: the last one is "the latest trained model" that `make serve` serves.
OPTIMIZERS = ("sgd", "adam")
# How long a model server may take to load TensorFlow and the model and answer /ping.
SERVE_START_SECONDS = 300


@dataclass
class TinyProject:
    """A temp copy of the project with tiny prepared data, and the raw test images it came from."""

    root: Path
    raw_test_images: np.ndarray  # (count, 28, 28) uint8, before standardization
    test_labels: np.ndarray


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory, project_copier) -> TinyProject:
    """Real Fashion-MNIST from DATASET_DIR when there (else synthetic files), prepared as the
    prepare stage would with TINY_DATA."""
    root = project_copier(tmp_path_factory.mktemp("tiny") / "project")
    raw_dir = DATASET_DIR
    if not HAS_DATASET:
        raw_dir = make_synthetic_raw(root.parent / "raw", n_train=1600, n_test=500).directory
    params = ProjectConfig.from_params(yaml.safe_load((root / "params.yaml").read_text()))
    prepare.prepare(raw_dir, root / "data" / "prepared", params.data.model_copy(update=TINY_DATA))
    test_images, test_labels = splits.load_raw(raw_dir, "t10k")
    count = TINY_DATA["max_test_images"]
    return TinyProject(root, test_images[:count], test_labels[:count])


def stage_environment(tracking_uri: str) -> dict[str, str]:
    """The environment a stage runs in: this venv first, MLflow at `tracking_uri`, no root override."""
    environment = os.environ.copy()
    environment.pop("FASHION_CNN_ROOT", None)
    environment.pop(fetch.MIRROR_ENV_VAR, None)
    environment.update(
        MLFLOW_TRACKING_URI=tracking_uri,
        PATH=f"{VENV_BIN}{os.pathsep}{environment.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
    )
    return environment


def run_to_the_end(stage: str, *overrides: str, cwd: Path, environment: dict[str, str]) -> str:
    """run_stage, failing with the stage's output unless it exits 0; what it printed."""
    result = run_stage(stage, *overrides, cwd=cwd, env=environment, timeout=600)
    assert result.returncode == 0, (
        f"{stage} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    return result.stdout + result.stderr


@dataclass
class TrainedRuns:
    """Two training runs (train then evaluate) that differ in train.optimizer, logged to `server`."""

    server: MlflowServer
    project: TinyProject
    run_ids: dict[str, str]  # optimizer -> MLflow run id
    reported_accuracy: dict[str, float]  # optimizer -> test accuracy in reports/metrics.json
    experiment_id: str


@pytest.fixture(scope="session")
def tracking_server(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server_factory
) -> Iterator[MlflowServer]:
    """A real `mlflow server` (SQLite store, model registry, artifact root) shared by the test modules
    that read the two training runs."""
    with mlflow_server_factory(tmp_path_factory.mktemp("tracking-server")) as server:
        yield server


@pytest.fixture(scope="session")
def trained_runs(tracking_server: MlflowServer, tiny_project: TinyProject) -> TrainedRuns:
    """Train and evaluate once per optimizer through the stage entry points, logging over HTTP
    (evaluate registers each run's model: versions 1 and 2 of the experiment's registered model)."""
    mlflow_server = tracking_server
    environment = stage_environment(mlflow_server.url)
    run_ids, accuracy = {}, {}
    for optimizer in OPTIMIZERS:
        # SGD at the default learning rate (0.001) is still at chance after one epoch here, and train
        # refuses a model that learned nothing (training/verdict.py).
        faster = ["train.learning_rate=0.05"] if optimizer == "sgd" else []
        overrides = [*TINY_RUN, f"train.optimizer={optimizer}", *faster]
        run_to_the_end("train", *overrides, cwd=tiny_project.root, environment=environment)
        run_to_the_end("evaluate", *overrides, cwd=tiny_project.root, environment=environment)
        run_info = json.loads((tiny_project.root / "data/model/mlflow_run.json").read_text())
        assert run_info["tracking_uri"] == mlflow_server.url
        run_ids[optimizer] = run_info["run_id"]
        accuracy[optimizer] = json.loads((tiny_project.root / "reports/metrics.json").read_text())["test"][
            "accuracy"
        ]
    return TrainedRuns(mlflow_server, tiny_project, run_ids, accuracy, run_info["experiment_id"])


def api(server: MlflowServer, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """GET (with query parameters) or POST (a JSON body) one MLflow REST endpoint; the JSON answer."""
    url = f"{server.url}{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(url)
    if body is not None:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def get_run(server: MlflowServer, run_id: str) -> dict:
    """A run as the REST API gives it, with params, metrics and tags turned into dicts."""
    run = api(server, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    for field in ("params", "metrics", "tags"):
        run["data"][field] = {item["key"]: item["value"] for item in run["data"].get(field, [])}
    return run


@contextlib.contextmanager
def process_group(command: list[str], **options) -> Iterator[subprocess.Popen]:
    """Run a command in its own process group; the whole group is killed on the way out."""
    process = subprocess.Popen(command, start_new_session=True, **options)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def exact_png_images(project: TinyProject, directory: Path, count: int = 2) -> tuple[np.ndarray, list[Path]]:
    """The first test images of different classes that predict reads back unchanged from a PNG.

    predict centres the garment's bounding box, which moves some Fashion-MNIST images by a pixel;
    comparing the server with predict needs the very same input, so those images are passed over.
    """
    chosen: list[int] = []
    paths: list[Path] = []
    for index, image in enumerate(project.raw_test_images):
        path = directory / f"test-{index}.png"
        Image.fromarray(image).save(path)
        same_input = np.array_equal(predict.load_image(path), image.astype(np.float32))
        new_class = project.test_labels[index] not in project.test_labels[chosen]
        if same_input and new_class:
            chosen.append(index)
            paths.append(path)
            if len(chosen) == count:
                return project.raw_test_images[chosen], paths
    pytest.fail(f"fewer than {count} test images survive predict's preprocessing unchanged")


def wait_for_ping(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll the model server's /ping; fail with its log if it exits or takes too long."""
    deadline = time.monotonic() + SERVE_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the model server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"{url}/ping", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    pytest.fail(
        f"the model server did not answer {url}/ping in {SERVE_START_SECONDS} s:\n{log.read_text()[-4000:]}"
    )
