"""A real `mlflow server`: two tiny training runs logged over HTTP (tracked_runs.py), read back through the
REST API and the UI's own endpoints, shown in headless Chromium, and a server that goes away in the
middle of training."""

from __future__ import annotations

import html
import json
import re
import shutil
import signal
import subprocess
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import missing_requirement
from servers import VENV_BIN
from tracked_runs import (
    OPTIMIZERS,
    TINY_RUN,
    TinyProject,
    TrainedRuns,
    api,
    get_run,
    process_group,
    stage_environment,
)

from fashion_cnn.data import splits
from fashion_cnn.tracking import runs

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")


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
    images = splits.load_pixels(trained_runs.project.root / "data/prepared", "test").images[:8]  # 0..255
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


def headless_chromium(url: str, profile: Path, *arguments: str) -> str:
    """Load `url` in Debian's Chromium, headless, letting the page's requests finish; its stdout."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--window-size=1400,1800",
        *arguments, url,
    ]  # fmt: skip
    with process_group(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as browser:
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
        with process_group(
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
