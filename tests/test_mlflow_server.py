"""A real `mlflow server`: two tiny training runs logged over HTTP, read back through the REST API and
the UI's own endpoints, shown in headless Chromium, served by `make serve`, and a server
that goes away in the middle of training."""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
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
from conftest import DATASET_DIR, HAS_DATASET, make_synthetic_raw, missing_requirement
from PIL import Image
from servers import VENV_BIN, MlflowServer, free_port
from stage_runner import run_stage

from fashion_cnn.data import fetch, splits
from fashion_cnn.stages import prepare
from fashion_cnn.tools import predict
from fashion_cnn.tracking import runs
from fashion_cnn.training.config import ProjectConfig

pytestmark = pytest.mark.slow

# The quick preset (small_cnn) on 1,000 training, 500 validation and 500 test images, one epoch.
TINY_DATA = {"max_train_images": 1000, "max_test_images": 500, "validation_size": 500}
TINY_RUN = [
    "experiment=quick",
    *(f"data.{key}={value}" for key, value in TINY_DATA.items()),
    "train.epochs=1",
]
# Trained in this order: the last one is "the latest trained model" that `make serve` serves.
OPTIMIZERS = ("sgd", "adam")
CHROMIUM = shutil.which("chromium")
# How long the model server may take to load TensorFlow and the model and answer /ping.
SERVE_START_SECONDS = 300


# ---- a tiny project and two training runs logged to the server ----


@dataclass
class TinyProject:
    """A temp copy of the project with tiny prepared data, and the raw test images it came from."""

    root: Path
    raw_test_images: np.ndarray  # (count, 28, 28) uint8, before standardization
    test_labels: np.ndarray


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def trained_runs(mlflow_server: MlflowServer, tiny_project: TinyProject) -> TrainedRuns:
    """Train and evaluate once per optimizer through the stage entry points, logging over HTTP."""
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


# ---- the runs, read back over the REST API ----


def test_both_runs_finished_with_their_own_params(trained_runs: TrainedRuns) -> None:
    for optimizer, run_id in trained_runs.run_ids.items():
        run = get_run(trained_runs.server, run_id)
        assert run["info"]["status"] == "FINISHED"
        assert run["data"]["params"]["train.optimizer"] == optimizer
        assert run["data"]["params"]["train.epochs"] == "1"
        assert run["data"]["params"]["data.max_train_images"] == "1000"
        assert run["data"]["tags"]["stage"] == "train"
        assert f"train.optimizer={optimizer}" in run["info"]["run_name"]


def test_one_metric_point_per_epoch(trained_runs: TrainedRuns) -> None:
    for run_id in trained_runs.run_ids.values():
        for metric in ("loss", "val_accuracy", "epoch_seconds"):
            history = api(
                trained_runs.server, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key=metric
            )["metrics"]
            assert [point["step"] for point in history] == [1], metric


def test_evaluate_logs_test_metrics_into_the_training_run(trained_runs: TrainedRuns) -> None:
    for optimizer, run_id in trained_runs.run_ids.items():
        run = get_run(trained_runs.server, run_id)
        assert run["data"]["metrics"]["test_accuracy"] == pytest.approx(
            trained_runs.reported_accuracy[optimizer], abs=1e-4
        )
        assert "test_f1.Ankle_boot" in run["data"]["metrics"]
        assert run["data"]["tags"]["stage.evaluate"] == "done"


def test_logged_model_loads_over_the_server_and_predicts_like_the_local_one(
    trained_runs: TrainedRuns,
) -> None:
    import keras
    import mlflow

    mlflow.set_tracking_uri(trained_runs.server.url)
    logged = mlflow.keras.load_model(f"runs:/{trained_runs.run_ids[OPTIMIZERS[-1]]}/model")
    local = keras.saving.load_model(trained_runs.project.root / "data/model/model.keras", safe_mode=True)
    images = splits.load_split(trained_runs.project.root / "data/prepared", "test").images[:8]
    np.testing.assert_allclose(logged.predict(images, verbose=0), local.predict(images, verbose=0), atol=1e-6)


def test_ui_search_endpoint_orders_runs_by_test_accuracy(trained_runs: TrainedRuns) -> None:
    accuracy = trained_runs.reported_accuracy
    assert accuracy["adam"] != accuracy["sgd"], "the two runs must differ for the order to mean anything"
    for direction in ("DESC", "ASC"):
        # The body the UI's runs table sends.
        found = api(
            trained_runs.server,
            "/ajax-api/2.0/mlflow/runs/search",
            {
                "experiment_ids": [trained_runs.experiment_id],
                "filter": "tags.stage = 'train'",
                "order_by": [f"metrics.test_accuracy {direction}"],
                "run_view_type": "ACTIVE_ONLY",
                "max_results": 100,
            },
        )["runs"]
        expected = sorted(OPTIMIZERS, key=accuracy.get, reverse=direction == "DESC")
        assert [run["info"]["run_id"] for run in found] == [trained_runs.run_ids[name] for name in expected]


def test_nothing_is_stored_locally_when_a_server_is_set(trained_runs: TrainedRuns) -> None:
    root = trained_runs.project.root
    assert not (root / "mlflow.db").exists()
    assert not (root / "mlartifacts").exists()
    assert not (root / "mlruns").exists()
    # The artifacts went through the server into its artifact root.
    stored = {path.name for path in (trained_runs.server.directory / "artifacts").rglob("*")}
    assert {"history.csv", "config.yaml", "confusion_matrix.png", "MLmodel"} <= stored


# ---- the UI's compare view in a real browser ----


@contextlib.contextmanager
def _process_group(command: list[str], **options) -> Iterator[subprocess.Popen]:
    """Run a command in its own process group; the whole group is killed on the way out."""
    process = subprocess.Popen(command, start_new_session=True, **options)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def headless_chromium(url: str, profile: Path, *arguments: str) -> str:
    """Load `url` in Debian's Chromium, headless, letting the page's requests finish; its stdout."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--window-size=1400,1800",
        *arguments, url,
    ]  # fmt: skip
    with _process_group(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as browser:
        stdout, _ = browser.communicate(timeout=240)
    assert browser.returncode == 0, f"chromium exited {browser.returncode}"
    return stdout


def table_rows(dom: str) -> list[list[str]]:
    """The text of every table cell in a rendered page, row by row."""
    rows = []
    for row in re.findall(r"<tr\b[^>]*>(.*?)</tr>", dom, re.S):
        cells = re.findall(r"<t[hd]\b[^>]*>(.*?)</t[hd]>", row, re.S)
        rows.append([" ".join(html.unescape(re.sub(r"<[^>]+>", " ", cell)).split()) for cell in cells])
    return rows


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; a missing requirement where it is not installed.

    Session-scoped, so that it is checked before the module's servers start and models train.
    """
    if CHROMIUM is None:
        missing_requirement(
            "needs Debian's chromium as `chromium` on PATH: `make browser` (as root) or "
            "`sudo apt-get install chromium` installs it"
        )
    return CHROMIUM


@pytest.mark.usefixtures("chromium")
def test_compare_view_in_headless_chromium_shows_both_runs_and_the_differing_param(
    trained_runs: TrainedRuns, tmp_path: Path, png_check
) -> None:
    run_ids = [trained_runs.run_ids[name] for name in OPTIMIZERS]
    # MLflow 3's route (Routes.getCompareRunPageRoute): JSON lists of run and experiment ids.
    query = urllib.parse.urlencode(
        {"runs": json.dumps(run_ids), "experiments": json.dumps([trained_runs.experiment_id])}
    )
    url = f"{trained_runs.server.url}/#/compare-runs?{query}"
    screenshot = tmp_path / "compare-runs.png"
    dom = headless_chromium(url, tmp_path / "profile", "--dump-dom", f"--screenshot={screenshot}")
    rows = table_rows(dom)
    names = [get_run(trained_runs.server, run_id)["info"]["run_name"] for run_id in run_ids]
    assert ["Run Name:", *names] in rows, "the compare view does not show both run names"
    assert ["train.optimizer", *OPTIMIZERS] in rows, "the compare view does not show the differing param"
    png_check(screenshot)
    print(f"screenshot of the compare view: {screenshot}")


@pytest.mark.usefixtures("chromium")
def test_the_experiment_opens_on_its_runs_table_in_headless_chromium(
    trained_runs: TrainedRuns, tmp_path: Path, png_check
) -> None:
    experiment = api(
        trained_runs.server, "/api/2.0/mlflow/experiments/get", experiment_id=trained_runs.experiment_id
    )["experiment"]
    tags = {tag["key"]: tag["value"] for tag in experiment["tags"]}
    assert tags[runs.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # The address `make ui` prints.
    url = runs.runs_table_url(trained_runs.server.url, trained_runs.experiment_id)
    screenshot = tmp_path / "experiment.png"
    dom = headless_chromium(url, tmp_path / "profile", "--dump-dom", f"--screenshot={screenshot}")
    names = [
        get_run(trained_runs.server, run_id)["info"]["run_name"] for run_id in trained_runs.run_ids.values()
    ]
    print(f"screenshot of the experiment page: {screenshot}")
    assert all(name in dom for name in names), "the experiment page does not list the training runs"
    assert "Detect issues" not in dom, "the GenAI overview opened instead of the runs table"
    png_check(screenshot)


# ---- serving the latest trained model ----


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


def test_served_model_predicts_what_the_predict_cli_says(trained_runs: TrainedRuns, tmp_path: Path) -> None:
    project = trained_runs.project
    images, png_paths = exact_png_images(project, tmp_path)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    environment = stage_environment("")  # `make serve` reads the URI from data/model/mlflow_run.json.
    with (
        open(log, "w") as log_file,
        _process_group(
            [sys.executable, "-m", "fashion_cnn.tools.serve", "--port", str(port)],
            cwd=project.root, env=environment, stdout=log_file, stderr=subprocess.STDOUT,
        ) as server,
    ):  # fmt: skip
        # The predict CLI runs while the server loads TensorFlow: both take seconds of CPU.
        cli = subprocess.run(
            [sys.executable, "-m", "fashion_cnn.tools.predict", "--json", "--top", "1", *map(str, png_paths)],
            cwd=project.root, env=environment, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        wait_for_ping(url, server, log)
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": images.tolist(), "top": 10}).encode(),  # raw pixels 0..255
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
    assert f"MLflow run {trained_runs.run_ids[OPTIMIZERS[-1]]}" in log.read_text()
    assert cli.returncode == 0, cli.stderr[-3000:]
    answers = [result["predictions"][0] for result in json.loads(cli.stdout)]
    # Each image's 10 probabilities in class order: (2, 10).
    served = np.asarray([[item["probability"] for item in sorted(top, key=lambda item: item["index"])]
                         for top in predictions])  # fmt: skip
    assert served.shape == (2, 10)
    assert list(served.argmax(axis=1)) == [answer["index"] for answer in answers]
    assert served.max(axis=1) == pytest.approx([answer["probability"] for answer in answers], abs=1e-5)


# ---- the server goes away mid-training ----


@pytest.mark.reliability(
    case="the real tracking server killed (SIGKILL) during `dvc repro train`",
    sees="training finishes, DVC records the outputs; one `warning:` line names the failed calls",
)
def test_server_gone_mid_training_keeps_every_output_and_names_the_failed_calls(
    dvc_project: Path, tiny_project: TinyProject, mlflow_server_factory, make_config, tmp_path: Path
) -> None:
    shutil.copytree(tiny_project.root / "data/prepared", dvc_project / "data/prepared")
    tiny = make_config(*TINY_RUN, "train.epochs=3", root=dvc_project)
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(tiny.model_dump(mode="json"), sort_keys=False))

    with mlflow_server_factory(tmp_path / "server") as server:
        command = [str(VENV_BIN / "dvc"), "repro", "--single-item", "train"]
        with _process_group(
            command, cwd=dvc_project, env=stage_environment(server.url),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ) as repro:  # fmt: skip
            lines = []
            for line in repro.stdout:
                lines.append(line)
                if line.startswith("epoch 1/3"):
                    server.stop(signal.SIGKILL)
                    break
            rest, _ = repro.communicate(timeout=600)
    output = "".join(lines) + rest

    assert repro.returncode == 0, output[-4000:]
    assert "epoch 3/3" in output
    warnings = [line for line in output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, output[-4000:]
    print(warnings[0])
    assert server.url in warnings[0]
    assert "log_metrics" in warnings[0] and "log_model" in warnings[0] and "end_run" in warnings[0]
    # Every output of the stage is there and DVC recorded it.
    assert (dvc_project / "data/model/model.keras").is_file()
    assert len((dvc_project / "reports/train/history.csv").read_text().splitlines()) == 4
    assert json.loads((dvc_project / "reports/train/metrics.json").read_text())["val_accuracy"] > 0
    lock = yaml.safe_load((dvc_project / "dvc.lock").read_text())
    recorded = {out["path"] for out in lock["stages"]["train"]["outs"]}
    assert recorded == {"data/model", "reports/train/metrics.json", "reports/train/history.csv"}
