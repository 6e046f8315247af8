"""A tracking server that misbehaves, at the start of a stage and in the middle of training.

At the start: an error status (5xx, 401, 403), no answer, or no server stops the stage in one line
naming the URI and what it answered, exit 1, nothing touched; a slow server that does answer works.
In the middle: the server answering 503, going away or hanging after the first epoch was logged
leaves training going; the model and metrics are written, the last line says what was not logged
and how to log it, and `python -m fashion_cnn.tools.log_training` then does.

The stages run in this process (stage_runner.run_stage(in_process=True): their `main`, as `python -m`
calls it) against tests/misbehaving_server.py
on 127.0.0.1, which passes requests on to a real `mlflow server` for the runs that need one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from misbehaving_server import MisbehavingServer
from stage_runner import run_stage, snapshot

from fashion_cnn.tools import log_training
from fashion_cnn.tracking import faults, runs

# Two epochs of the quick preset on the 100 synthetic training images; no checkpoint to clean up,
# and no process-wide deterministic ops left behind for the tests after this one.
TINY_TRAIN = ("model=small_cnn", "train.epochs=2", "train.deterministic=false", "train.checkpoint=false")
# What train writes; none may change when the stage is refused at the start (data/train.lock, the
# lock a run takes before its MLflow run starts, is not an output).
OUTPUTS = ("data/prepared", "data/model", "reports")


@pytest.fixture(autouse=True)
def _own_retry_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """tracking.connect sets MLflow's retry settings in this process: forget them after each test."""
    for name in runs.HTTP_RETRY_DEFAULTS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_server() -> Iterator[MisbehavingServer]:
    fake = MisbehavingServer()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def train_project(project: Path, synthetic_prepared: Path) -> Path:
    """A project copy with 100/20/30 prepared images and outputs of an earlier run in place."""
    shutil.copytree(synthetic_prepared, project / "data" / "prepared")
    for name, text in {
        "data/model/model.keras": "an earlier model\n",
        "data/model/mlflow_run.json": '{"run_id": "0"}\n',
        "reports/train/history.csv": "epoch,loss\n1,0.5\n",
        "reports/train/metrics.json": '{"val_accuracy": 0.5}\n',
    }.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    return project


def train_here(project: Path) -> tuple[int, str, float]:
    """TINY_TRAIN through the train stage in this process: exit code, stderr and seconds."""
    result = run_stage("train", *TINY_TRAIN, cwd=project, in_process=True)
    return result.returncode, result.stderr, result.seconds


def our_lines(stderr: str) -> list[str]:
    """The stage's own lines on stderr: errors and warnings (not MLflow's or Hydra's log lines)."""
    return [line for line in stderr.splitlines() if line.startswith(("error: ", "warning: "))]


# ---- at the start ----

STARTS = {
    "500": (lambda fake: fake.answer(500), "answered HTTP 500 Internal Server Error on /health"),
    "503": (lambda fake: fake.answer(503, retry_after=3600), "answered HTTP 503 Service Unavailable"),
    "401": (lambda fake: fake.answer(401), "answered HTTP 401 Unauthorized on /health"),
    "403": (lambda fake: fake.answer(403), "answered HTTP 403 Forbidden on /health"),
    "api-401": (
        lambda fake: fake.answer(401, health_status=200),
        "answered HTTP 401 Unauthorized on /api/2.0/mlflow/experiments/search",
    ),
    "hang": (lambda fake: fake.hang(), f"did not answer /health within {faults.SERVER_TIMEOUT_SECONDS:g} s"),
    "gone": (lambda fake: fake.go_away(), "is unreachable ([Errno 111] Connection refused)"),
}
START_CASES = {
    "500": "tracking server answers HTTP 500 when train starts",
    "503": "tracking server answers HTTP 503 (Retry-After: 1 hour) when train starts",
    "401": "tracking server answers HTTP 401 when train starts",
    "403": "tracking server answers HTTP 403 when train starts",
    "api-401": "tracking server's /health answers 200 but its API 401",
    "hang": "tracking server accepts the connection but never answers, at the start",
    "gone": "no tracking server listens at MLFLOW_TRACKING_URI",
}
START_SEES = "one `error:` line naming the URI and {what}; exit 1; no output touched"
START_WHAT = {"hang": "'did not answer ... within 5 s'", "gone": "'unreachable'"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=pytest.mark.reliability(
                case=case, sees=START_SEES.format(what=START_WHAT.get(name, f"'HTTP {name[-3:]}'"))
            ),
            id=name,
        )
        for name, case in START_CASES.items()
    ],
)
def test_an_unhealthy_server_stops_train_before_it_starts(
    name: str, train_project: Path, fake_server: MisbehavingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup, expected = STARTS[name]
    setup(fake_server)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fake_server.url)
    before = snapshot(train_project, OUTPUTS)
    code, stderr, seconds = train_here(train_project)
    assert code == 1, stderr
    (line,) = our_lines(stderr)
    assert line.startswith(
        f"error: MLflow tracking server {fake_server.url} (MLFLOW_TRACKING_URI) {expected}"
    )
    assert "unset MLFLOW_TRACKING_URI" in line and len(line) < 400
    assert snapshot(train_project, OUTPUTS) == before
    # Only the check was made: no experiment, no run, no retries.
    assert all(request.split("?")[0] in ("GET /health", "GET /api/2.0/mlflow/experiments/search")
               for request in fake_server.requests), fake_server.requests  # fmt: skip
    assert seconds < 2 * faults.SERVER_TIMEOUT_SECONDS


@pytest.mark.reliability(
    case="tracking server passes its check, then answers 503 as the run starts",
    sees="one `error:` line naming the URI and the 503, 'nothing was run'; exit 1; no output touched",
)
def test_a_server_failing_right_after_its_check_stops_the_stage_in_one_line(
    train_project: Path, fake_server: MisbehavingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_server.answer(200)
    fake_server.fail_after(
        lambda method, path, body: "experiments/search" in path,
        lambda: fake_server.answer(503, retry_after=3600),
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fake_server.url)
    before = snapshot(train_project, OUTPUTS)
    code, stderr, seconds = train_here(train_project)
    assert code == 1, stderr
    (line,) = our_lines(stderr)
    assert line.startswith(
        f"error: MLflow tracking store {fake_server.url} failed as the train stage started"
    )
    assert "503" in line and "nothing was run" in line and len(line) < 600
    assert snapshot(train_project, OUTPUTS) == before
    # MLflow's retries are bounded: 3 attempts, about 3 s in all, whatever Retry-After says.
    assert len([request for request in fake_server.requests if "get-by-name" in request]) == 3
    assert seconds < 20


# ---- a slow server works ----


@pytest.mark.reliability(
    case="tracking server answers every request 0.5 s late",
    sees="the stage runs and logs as usual; no warning",
)
def test_a_slow_server_that_answers_is_used(
    project: Path, fake_server: MisbehavingServer, mlflow_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_server.proxy(mlflow_server.url, delay_seconds=0.5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fake_server.url)
    result = run_stage("memory", cwd=project, in_process=True)
    code, stderr, seconds = result.returncode, result.stderr, result.seconds
    assert code == 0, stderr
    assert our_lines(stderr) == []
    assert seconds >= 0.5 * len(fake_server.requests)
    client = mlflow.MlflowClient(mlflow_server.url)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("fashion-cnn-pipeline").experiment_id], "tags.stage = 'memory'"
    )
    assert run.info.status == "FINISHED"
    assert run.data.metrics["parameters"] > 0


# ---- in the middle of training ----


def first_epoch_logged(method: str, path: str, body: bytes) -> bool:
    """The request that logs epoch 1's metrics (EpochReport's log_metrics, step 1)."""
    return path.endswith("/runs/log-batch") and b'"epoch_seconds"' in body


# How long one logging call may try a server that never answers, in this test (the stage's own
# default is 10 s; the user's setting wins, and so does this one).
HANG_TIMEOUT_SECONDS = "1"
MIDDLE = {
    "503": (
        lambda fake: fake.answer(503, retry_after=3600),
        "answered HTTP 503 Service Unavailable",
    ),
    "gone": (lambda fake: fake.go_away(), "is unreachable ([Errno 111] Connection refused)"),
    "hang": (
        lambda fake: fake.hang(),
        f"did not answer /health within {faults.PROBE_TIMEOUT_SECONDS:g} s",
    ),
}
MIDDLE_CASES = {
    "503": "tracking server answers 503 (Retry-After: 1 hour) from the end of epoch 1 on",
    "gone": "tracking server goes away (its port closes) after epoch 1 was logged",
    "hang": "tracking server stops answering (accepts, never replies) after epoch 1",
}
MIDDLE_SEES = "training goes on, outputs written; one `warning:` line: what was not logged, how to log it"


@dataclass
class InterruptedRun:
    """A tiny training run whose server failed after epoch 1: what it printed and wrote."""

    project: Path
    fake: MisbehavingServer
    code: int
    warning: str
    seconds: float
    requests_after_failure: list[str]


def train_until_the_server_fails(
    project: Path, fake: MisbehavingServer, upstream: str, failure: Callable[[MisbehavingServer], None]
) -> InterruptedRun:
    """Train TINY_TRAIN logging through `fake` (passing requests on to the real server at `upstream`),
    which fails with `failure` once epoch 1's metrics went through."""
    fake.proxy(upstream)
    failed_at: list[int] = []

    def fail() -> None:
        failed_at.append(len(fake.requests))
        failure(fake)

    fake.fail_after(first_epoch_logged, fail)
    code, stderr, seconds = train_here(project)
    warnings = [line for line in our_lines(stderr) if line.startswith("warning: ")]
    assert code == 0 and len(warnings) == 1, stderr[-4000:]
    assert failed_at, "the server never saw epoch 1's metrics"
    return InterruptedRun(project, fake, code, warnings[0], seconds, fake.requests[failed_at[0] :])


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.reliability(case=case, sees=MIDDLE_SEES), id=name)
        for name, case in MIDDLE_CASES.items()
    ],
)
def test_training_outlives_a_server_that_fails_in_the_middle(
    name: str, train_project: Path, fake_server: MisbehavingServer, mlflow_server, monkeypatch
) -> None:
    failure, cause = MIDDLE[name]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fake_server.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", HANG_TIMEOUT_SECONDS)
    run = train_until_the_server_fails(train_project, fake_server, mlflow_server.url, failure)

    # Every output is written, as if the server had been there.
    project = train_project
    assert len((project / "reports/train/history.csv").read_text().splitlines()) == 3
    assert json.loads((project / "reports/train/metrics.json").read_text())["val_accuracy"] >= 0
    assert (project / "data/model/model.keras").read_bytes()[:2] == b"PK"
    run_id = json.loads((project / "data/model/mlflow_run.json").read_text())["run_id"]
    # One line: what was not logged, why, where the records are and how to log them.
    warning = run.warning
    assert (
        warning.startswith("warning: ") and f"MLflow logging call(s) to {fake_server.url} failed (" in warning
    )
    for call in ("log_metrics x2", "log_text", "log_artifact x2", "log_model", "end_run"):
        assert call in warning, warning
    assert f"): the server {cause}" in warning, warning
    assert "on disk (data/model, reports/train/metrics.json, reports/train/history.csv)" in warning
    assert f"`{runs.LOG_TRAINING_COMMAND}` logs them into MLflow run {run_id}" in warning
    # A gone server is asked again at most every PROBE_INTERVAL_SECONDS, not once per call: after
    # the first failed call (3 attempts) and its probe, the calls are skipped without a request,
    # but for end_run's one quick attempt.
    attempts = [request for request in run.requests_after_failure if "/health" not in request]
    assert len(attempts) <= 4, run.requests_after_failure
    assert run.seconds < 120
    # The run is ended in this process all the same: a sweep's next job can start its own.
    assert mlflow.active_run() is None


@pytest.mark.reliability(
    case="tracking server gone mid-stage comes back",
    sees="calls until the next probe (at most every 30 s) are skipped at once, then logging resumes",
)
def test_calls_are_skipped_while_the_server_is_gone_and_made_again_once_it_answers(
    fake_server: MisbehavingServer,
) -> None:
    failures = faults.LoggingFailures(fake_server.url)
    fake_server.answer(503)
    made = []

    def log_metrics(values: dict[str, float]) -> None:
        made.append(values)
        raise mlflow.exceptions.MlflowException("API request failed with error code 503 != 200")

    assert failures.call(log_metrics, {"loss": 0.9}) is None
    assert failures.server_gone
    probes = len(fake_server.requests)
    assert failures.call(log_metrics, {"loss": 0.5}) is None
    # Skipped without a request: neither the call nor a probe, until the next probe is due.
    assert made == [{"loss": 0.9}] and len(fake_server.requests) == probes
    fake_server.answer(200)
    assert failures.call(lambda: "logged") is None
    failures.next_probe = time.monotonic()  # PROBE_INTERVAL_SECONDS have passed
    assert failures.call(lambda: "logged") == "logged"
    assert not failures.server_gone
    summary = failures.summary()
    assert "3 MLflow logging call(s)" in summary and "(log_metrics x2, <lambda>)" in summary
    assert "the server answered HTTP 503 Service Unavailable on /health" in summary


# ---- logging it later ----


@pytest.mark.reliability(
    case="a training run left incomplete on its server by a failure after epoch 1",
    sees="`python -m fashion_cnn.tools.log_training` logs what it lacks from disk; the run ends FINISHED",
)
def test_what_was_not_logged_is_logged_from_disk_once_the_server_answers(
    train_project: Path, fake_server: MisbehavingServer, mlflow_server, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fake_server.url)
    train_until_the_server_fails(train_project, fake_server, mlflow_server.url, lambda fake: fake.answer(503))
    run_id = json.loads((train_project / "data/model/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(mlflow_server.url)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert [point.step for point in client.get_metric_history(run_id, "loss")] == [1]
    capsys.readouterr()

    # While the server still fails, the command stops in one line and logs nothing.
    assert log_training.main([]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        f"error: MLflow tracking server {fake_server.url} (MLFLOW_TRACKING_URI) answered HTTP 503"
    )
    assert "\n" not in error

    fake_server.proxy(mlflow_server.url)
    assert log_training.main([]) == 0
    printed = capsys.readouterr().out
    assert (
        f"logged into MLflow run {run_id} at {fake_server.url}: the config, 1 epoch(s) of metrics" in printed
    )
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history_rows = (train_project / "reports/train/history.csv").read_text().splitlines()[1:]
    for metric in ("loss", "val_accuracy", "epoch_seconds"):
        points = client.get_metric_history(run_id, metric)
        assert sorted(point.step for point in points) == [1, 2], metric
    assert float(history_rows[1].split(",")[2]) == pytest.approx(run.data.metrics["loss"], abs=1e-6)
    totals = json.loads((train_project / "reports/train/metrics.json").read_text())
    assert run.data.metrics["train_seconds"] == totals["train_seconds"]
    assert {"model_summary.txt", "config.yaml", "history.csv"} <= {
        item.path for item in client.list_artifacts(run_id)
    }
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )
    assert [str(model.status) for model in models] == ["READY"]

    # Again: nothing is logged twice.
    assert log_training.main([]) == 0
    assert "0 epoch(s) of metrics (2 were there)" in capsys.readouterr().out
    assert len(client.get_metric_history(run_id, "loss")) == 2
