"""The model users take away, through a real `mlflow server` and its registry (tracked_runs.py trains two
runs): evaluate registers each run's model as a version, `promote` moves the `champion` alias, and
predict, serve and MLflow's own `mlflow models serve` answer raw pixels for `models:/<name>@champion` as
the project's model does."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from servers import VENV_BIN, MlflowServer, free_port
from tracked_runs import (
    OPTIMIZERS,
    TrainedRuns,
    api,
    exact_png_images,
    process_group,
    stage_environment,
    wait_for_ping,
)

pytestmark = pytest.mark.slow


def registered_name(trained_runs: TrainedRuns) -> str:
    """The registered model of the runs' experiment: it has the experiment's name."""
    return api(
        trained_runs.server, "/api/2.0/mlflow/experiments/get", experiment_id=trained_runs.experiment_id
    )["experiment"]["name"]


def versions(server: MlflowServer, name: str) -> list[dict]:
    """The registered model's versions as the REST API gives them, oldest first, tags as a dict."""
    found = api(server, "/api/2.0/mlflow/model-versions/search", filter=f"name='{name}'")["model_versions"]
    for version in found:
        version["tags"] = {item["key"]: item["value"] for item in version.get("tags", [])}
    return sorted(found, key=lambda version: int(version["version"]))


def alias_version(server: MlflowServer, name: str, alias: str) -> str:
    """The version an alias points at, read back from the registry."""
    found = api(server, "/api/2.0/mlflow/registered-models/alias", name=name, alias=alias)
    return found["model_version"]["version"]


def tool(trained_runs: TrainedRuns, module: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """`python -m fashion_cnn.tools.<module>` in the project, against the tracking server."""
    return subprocess.run(
        [sys.executable, "-m", f"fashion_cnn.tools.{module}", *arguments],
        cwd=trained_runs.project.root, env=stage_environment(trained_runs.server.url),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def promote(trained_runs: TrainedRuns, *arguments: str) -> str:
    """Run the promote tool, failing with its output unless it exits 0; what it printed."""
    result = tool(trained_runs, "promote", *arguments)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def predicted(trained_runs: TrainedRuns, png_paths: list[Path], *model: str) -> np.ndarray:
    """predict --json's 10 probabilities per image, in class order: (images, 10)."""
    result = tool(trained_runs, "predict", "--json", "--top", "10", *model, *map(str, png_paths))
    assert result.returncode == 0, result.stderr[-3000:]
    return np.asarray(
        [[item["probability"] for item in sorted(found["predictions"], key=lambda item: item["index"])]
         for found in json.loads(result.stdout)]
    )  # fmt: skip


def post_json(url: str, body: dict) -> dict:
    """POST a JSON body; the JSON answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def model_server(command: list[str], trained_runs: TrainedRuns, log: Path, port: int) -> Iterator[str]:
    """A model server started by `command` in the project, against the tracking server; its URL once
    it answers /ping."""
    url = f"http://127.0.0.1:{port}"
    with (
        open(log, "w") as log_file,
        process_group(
            command, cwd=trained_runs.project.root, env=stage_environment(trained_runs.server.url),
            stdout=log_file, stderr=subprocess.STDOUT,
        ) as server,
    ):  # fmt: skip
        wait_for_ping(url, server, log)
        yield url


# ---- the registry ----


def test_evaluate_registers_each_training_run_as_a_tagged_version(trained_runs: TrainedRuns) -> None:
    name = registered_name(trained_runs)
    found = versions(trained_runs.server, name)
    assert [version["run_id"] for version in found] == [trained_runs.run_ids[name] for name in OPTIMIZERS]
    root = trained_runs.project.root
    train_split_hash = hashlib.sha256((root / "data/prepared/train.npz").read_bytes()).hexdigest()
    for version, optimizer in zip(found, OPTIMIZERS, strict=True):
        assert version["tags"]["run_id"] == trained_runs.run_ids[optimizer]
        assert float(version["tags"]["test_accuracy"]) == trained_runs.reported_accuracy[optimizer]
        assert version["tags"]["train_data_sha256"] == train_split_hash
    # The latest run's tags are its reports' values and its model file's hash.
    metrics = json.loads((root / "reports/metrics.json").read_text())
    latest = found[-1]["tags"]
    assert float(latest["validation_accuracy"]) == metrics["validation"]["accuracy"]
    assert (
        latest["model_sha256"] == hashlib.sha256((root / "data/model/model.keras").read_bytes()).hexdigest()
    )


def test_promote_moves_the_alias_to_a_chosen_version_or_the_best_by_validation(
    trained_runs: TrainedRuns,
) -> None:
    server, name = trained_runs.server, registered_name(trained_runs)
    assert "version 1" in promote(trained_runs, "--version", "1")
    assert alias_version(server, name, "champion") == "1"

    by_validation = {
        int(item["version"]): float(item["tags"]["validation_accuracy"]) for item in versions(server, name)
    }
    best = max(by_validation, key=lambda version: (by_validation[version], version))
    line = promote(trained_runs, "--best")
    assert f"models:/{name}@champion -> version {best}" in line
    assert alias_version(server, name, "champion") == str(best)
    listing = promote(trained_runs, "--list")
    assert any(row.split()[:2] == [str(best), "champion"] for row in listing.splitlines())

    missing = tool(trained_runs, "promote", "--version", "9")
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        == f"error: --version 9: registered model {name!r} has no such version (has: 1, 2)"
    )
    assert alias_version(server, name, "champion") == str(best)  # unchanged
    reserved = tool(trained_runs, "promote", "--best", "--alias", "v3")
    assert reserved.returncode == 2 and "--alias = 'v3'" in reserved.stderr


# ---- predict, serve and `mlflow models serve` follow the alias ----


def test_predict_follows_the_alias_through_the_registry(trained_runs: TrainedRuns, tmp_path: Path) -> None:
    name = registered_name(trained_runs)
    _, png_paths = exact_png_images(trained_runs.project, tmp_path)
    local = predicted(trained_runs, png_paths)  # data/model/model.keras: the latest run's (version 2)
    promote(trained_runs, "--version", "2")
    np.testing.assert_allclose(
        predicted(trained_runs, png_paths, "--model", f"models:/{name}@champion"), local, atol=1e-6
    )
    promote(trained_runs, "--version", "1")
    first = predicted(trained_runs, png_paths, "--model", f"models:/{name}@champion")
    assert not np.allclose(first, local, atol=1e-3), "the alias moved to another model: other answers"
    np.testing.assert_allclose(
        predicted(trained_runs, png_paths, "--model", f"models:/{name}/1"), first, atol=1e-6
    )

    unknown = tool(trained_runs, "predict", "--model", f"models:/{name}@nobody", str(png_paths[0]))
    assert unknown.returncode == 1
    [line] = unknown.stderr.strip().splitlines()
    assert line.startswith(f"error: --model models:/{name}@nobody: not found in {trained_runs.server.url}")
    malformed = tool(trained_runs, "predict", "--model", "models:/", str(png_paths[0]))
    assert malformed.returncode == 1
    assert "use models:/<name>@<alias> or models:/<name>/<version>" in malformed.stderr


def test_a_registered_model_that_carries_code_is_refused(trained_runs: TrainedRuns, tmp_path: Path) -> None:
    import keras
    import mlflow

    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(
        keras.layers.Flatten()(keras.layers.Lambda(lambda x: x / 255)(inputs))
    )
    mlflow.set_tracking_uri(trained_runs.server.url)
    with mlflow.start_run():
        logged = mlflow.keras.log_model(keras.Model(inputs, outputs), name="model")
    mlflow.register_model(logged.model_uri, "carries-code")
    _, png_paths = exact_png_images(trained_runs.project, tmp_path, count=1)
    refused = tool(trained_runs, "predict", "--model", "models:/carries-code/1", str(png_paths[0]))
    assert refused.returncode == 1
    assert "refused: the model carries code (Lambda layer" in refused.stderr
    assert refused.stdout == ""


def test_mlflow_models_serve_answers_raw_pixels_with_the_classes_serve_gives(
    trained_runs: TrainedRuns, tmp_path: Path
) -> None:
    name = registered_name(trained_runs)
    promote(trained_runs, "--version", "2")
    images, _ = exact_png_images(trained_runs.project, tmp_path)  # (2, 28, 28) grey levels 0..255
    uri = f"models:/{name}@champion"
    mlflow_command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                      "--host", "127.0.0.1", "--port"]  # fmt: skip
    port = free_port()
    with model_server([*mlflow_command, str(port)], trained_runs, tmp_path / "mlflow-serve.log", port) as url:
        # MLflow's scoring protocol: a tensor as the signature says, (count, 28, 28, 1) raw pixels.
        answer = post_json(f"{url}/invocations", {"inputs": images[..., np.newaxis].astype(float).tolist()})
    by_mlflow = np.asarray(answer["predictions"])  # (2, 10)

    port = free_port()
    serve_command = [sys.executable, "-m", "fashion_cnn.tools.serve", "--model", uri, "--port", str(port)]
    log = tmp_path / "serve.log"
    with model_server(serve_command, trained_runs, log, port) as url:
        answer = post_json(f"{url}/invocations", {"inputs": images.tolist(), "top": 10})
    assert f"serving {uri} (version 2, MLflow run {trained_runs.run_ids['adam']})" in log.read_text()
    by_serve = np.asarray(
        [
            [item["probability"] for item in sorted(top, key=lambda item: item["index"])]
            for top in answer["predictions"]
        ]
    )
    assert by_mlflow.shape == by_serve.shape == (2, 10)
    assert list(by_mlflow.argmax(axis=1)) == list(by_serve.argmax(axis=1))
    np.testing.assert_allclose(by_mlflow, by_serve, atol=1e-5)


def test_served_model_predicts_what_the_predict_cli_says(trained_runs: TrainedRuns, tmp_path: Path) -> None:
    project = trained_runs.project
    images, png_paths = exact_png_images(project, tmp_path)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    environment = stage_environment("")  # `make serve` reads the URI from data/model/mlflow_run.json.
    with (
        open(log, "w") as log_file,
        process_group(
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
