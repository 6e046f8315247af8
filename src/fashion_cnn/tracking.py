"""MLflow wiring: where runs are stored, how they are named and tagged, and safe logging helpers."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import platform
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from fashion_cnn import paths, sweep
from fashion_cnn.atomic import write_json_atomic
from fashion_cnn.cli import hydra_overrides
from fashion_cnn.config import ProjectConfig, flatten
from fashion_cnn.errors import FashionCnnError

log = logging.getLogger(__name__)

# MLflow refuses param values over 6000 characters and batches over 100 params.
MAX_PARAM_LENGTH = 6000
PARAM_BATCH = 100
# How long a remote tracking server may take to answer its health check.
SERVER_TIMEOUT_SECONDS = 5.0
# MLflow retries a failed request 7 times over about 4 minutes (meant for rate-limited hosted
# servers), per call. A stage whose server went away mid-run should give up on a call within
# seconds and go on training, so stages retry twice within about 3 s unless the user set these.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def tracking_uri(project: paths.ProjectPaths) -> str:
    """$MLFLOW_TRACKING_URI when set (a remote server), else the SQLite store in the repo root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project.mlflow_db}"


def artifact_location(uri: str) -> str | None:
    """mlartifacts/ beside a SQLite store (MLflow's default, ./mlruns, depends on the working
    directory); None for a tracking server, which has its own artifact root."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///")).resolve()
    return (database.parent / "mlartifacts").as_uri()


def is_remote(uri: str) -> bool:
    """True for a tracking server URI (http or https), False for a local store."""
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, timeout_seconds: float = SERVER_TIMEOUT_SECONDS) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer (MLflow retries for minutes)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_seconds):
            return
    except urllib.error.HTTPError:
        return  # It answered: a server behind a proxy may not expose /health.
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise FashionCnnError(
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable ({reason}); start it or "
            f"unset MLFLOW_TRACKING_URI to use the local mlflow.db"
        ) from None


def use_experiment(project: paths.ProjectPaths, experiment_name: str) -> str:
    """Point MLflow at the project's store and experiment, creating it if needed; return its id."""
    uri = tracking_uri(project)
    if is_remote(uri):
        check_server(uri)
        for name, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is not None:
        mlflow.set_experiment(experiment_name)
        return experiment.experiment_id
    location = artifact_location(uri)
    try:
        experiment_id = mlflow.create_experiment(experiment_name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another process created it first.
        experiment_id = mlflow.get_experiment_by_name(experiment_name).experiment_id
    mlflow.set_experiment(experiment_name)
    return experiment_id


def git_tags(root: Path) -> dict[str, str]:
    """The commit the run came from and whether the working tree had uncommitted changes."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False, timeout=10
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {
        "git.commit": commit,
        "mlflow.source.git.commit": commit,
        "git.dirty": str(dirty).lower(),
    }


def run_tags(project: paths.ProjectPaths, stage: str, overrides: list[str]) -> dict[str, str]:
    """Tags that tell runs apart: stage, DVC experiment, Hydra overrides, git commit, host."""
    tags = {"stage": stage, "host": platform.node(), "python": platform.python_version()}
    tags.update(git_tags(project.root))
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_ROOT"):
        tags["launched_by"] = "dvc"
    if overrides:
        tags["hydra.overrides"] = " ".join(overrides)
    return tags


def log_config(config: ProjectConfig) -> None:
    """Log the whole resolved config as flat dotted params (in batches MLflow accepts) and as config.yaml."""
    items = [(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in flatten(config).items()]
    for start in range(0, len(items), PARAM_BATCH):
        mlflow.log_params(dict(items[start : start + PARAM_BATCH]))
    mlflow.log_dict(config.model_dump(mode="json"), "config.yaml")


# ---- logging that survives a tracking server going away ----

# What a logging call raises when the store or server fails: MLflow wraps most HTTP errors in
# MlflowException; artifact uploads can surface requests' and the OS's own errors.
LOGGING_ERRORS = (mlflow.exceptions.MlflowException, requests.exceptions.RequestException, OSError)


class LoggingFailures:
    """The MLflow calls of one stage that failed: a lost server costs the run's records, not the outputs."""

    def __init__(self, uri: str = "") -> None:
        self.uri = uri
        self.failed: list[str] = []
        self.first_error = ""
        # Set when a call failed and the server did not answer its health check either; cleared
        # when a later call gets through.
        self.server_gone = False

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """function(*args, **kwargs), or None (recorded) when it fails."""
        try:
            if not self.server_gone:
                return function(*args, **kwargs)
            with quick_requests():
                result = function(*args, **kwargs)
            self.server_gone = False
            return result
        except LOGGING_ERRORS as error:
            self.failed.append(getattr(function, "__name__", repr(function)))
            self.first_error = self.first_error or " ".join(str(error).split())[:300]
            if not self.server_gone and is_remote(self.uri):
                self.server_gone = not server_answers(self.uri)
            return None

    def summary(self) -> str:
        """One line naming the failed calls, or '' when every call succeeded."""
        if not self.failed:
            return ""
        counts = collections.Counter(self.failed)
        calls = ", ".join(f"{name} x{count}" if count > 1 else name for name, count in counts.items())
        cause = "the server stopped answering" if self.server_gone else self.first_error
        return (
            f"warning: {len(self.failed)} MLflow logging call(s) to {self.uri} failed ({calls}): {cause}; "
            f"the stage's own outputs are complete, its MLflow run is not"
        )


@contextlib.contextmanager
def quick_requests() -> Iterator[None]:
    """MLflow requests without retries and with the health check's timeout, for a server that is gone:
    each call then fails at once (or comes through if the server is back) instead of stalling."""
    quick = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(SERVER_TIMEOUT_SECONDS)),
    }
    saved = {name: os.environ.get(name) for name in quick}
    os.environ.update(quick)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def server_answers(uri: str) -> bool:
    """Whether a tracking server answers its health check now."""
    try:
        check_server(uri)
    except FashionCnnError:
        return False
    return True


# The stage in progress records its failed calls here (stage_run installs a fresh one).
_failures = LoggingFailures()


def log_safely(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an MLflow logging function; a failure is recorded and reported when the stage ends."""
    return _failures.call(function, *args, **kwargs)


# ---- one MLflow run per stage ----


@contextlib.contextmanager
def stage_run(
    project: paths.ProjectPaths,
    config: ProjectConfig,
    stage: str,
    run_name: str,
    experiment_name: str,
    overrides: list[str],
    run_id: str | None = None,
) -> Iterator[Any]:
    """Start (or, given run_id, resume) an MLflow run for a stage; KILLED on Ctrl-C, FAILED on error.

    Logging calls made through log_safely during the stage that fail are listed in one warning
    line at the end, after the stage's outputs are written.
    """
    global _failures
    experiment_id = use_experiment(project, experiment_name)
    _failures = LoggingFailures(mlflow.get_tracking_uri())
    if run_id is None:
        tags = run_tags(project, stage, overrides)
        if os.environ.get("DVC_EXP_NAME"):
            run_name = f"{run_name} (dvc exp {os.environ['DVC_EXP_NAME']})"
        if (active_sweep := sweep.current()) is not None:
            if active_sweep.parent_run_id is None:
                parent_tags = run_tags(project, stage, active_sweep.overrides)
                active_sweep.start_parent(experiment_id, parent_tags)
            tags[MLFLOW_PARENT_RUN_ID] = active_sweep.parent_run_id
        run = mlflow.start_run(run_name=run_name, tags=tags)
        log_config(config)
    else:
        run = mlflow.start_run(run_id=run_id)
        mlflow.set_tag(f"stage.{stage}", "done")
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        log_safely(mlflow.end_run, status=status)
        if (active_sweep := sweep.current()) is not None and run_id is None:
            active_sweep.child_statuses.append(status)
        if summary := _failures.summary():
            print(summary, file=sys.stderr, flush=True)


def write_run_info(project: paths.ProjectPaths, run: Any) -> None:
    """Record the train stage's MLflow run beside the model, so later stages log into it."""
    write_json_atomic(
        project.run_info_file,
        {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "tracking_uri": mlflow.get_tracking_uri(),
        },
    )


def pipeline_run(project: paths.ProjectPaths, config: ProjectConfig, stage: str) -> Any:
    """The MLflow run of a stage that trains no model (download, prepare, memory, seed_figures):
    named after the stage, in tracking.pipeline_experiment_name, tagged with the command's overrides."""
    return stage_run(
        project, config, stage, stage, config.tracking.pipeline_experiment_name, hydra_overrides()
    )
