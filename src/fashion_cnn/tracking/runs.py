"""MLflow wiring: where runs are stored, how they are named and tagged, and one run per stage."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from fashion_cnn.config.cli import hydra_overrides
from fashion_cnn.config.schema import ParamsSchema
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.tracking import faults, record, store, sweep
from fashion_cnn.utils import paths

log = logging.getLogger(__name__)

# MLflow retries a failed request 7 times over about 4 minutes (meant for rate-limited hosted
# servers), waits up to 120 s for each answer and sleeps as long as a 503's Retry-After asks, per
# call. A stage whose server went away mid-run should give up on a call soon and go on training, so
# unless the user set these a call makes 3 attempts of at most 10 s each, 0 and about 3 s apart:
# about 3 s on a server that refuses or answers 5xx, at most about 35 s on one that never answers.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
}
# What logs a training run's records from data/model and reports/train after its server was gone.
LOG_TRAINING_COMMAND = "python -m fashion_cnn.tools.log_training"
# MLflow 3's UI opens an experiment on its GenAI overview unless this tag says it trains models;
# then it opens on the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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


def connect(uri: str) -> None:
    """Point MLflow at a store; a tracking server is checked first (one line if it is not healthy)
    and its calls get bounded retries (HTTP_RETRY_DEFAULTS, unless the user set them)."""
    if faults.is_remote(uri):
        faults.check_server(uri)
        for name, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)
    # The local mlflow.db: damaged, of another schema or locked, one line instead of a traceback.
    store.check_store(uri)
    mlflow.set_tracking_uri(uri)


def use_experiment(project: paths.ProjectPaths, experiment_name: str) -> str:
    """Point MLflow at the project's store and experiment, creating it if needed; return its id."""
    uri = tracking_uri(project)
    connect(uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is not None:
        mlflow.set_experiment(experiment_name)
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            # An experiment made before the tag existed, or by MLflow itself: mark it too.
            mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    location = artifact_location(uri)
    try:
        experiment_id = mlflow.create_experiment(
            experiment_name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    except mlflow.exceptions.MlflowException:
        # Another process created it first.
        experiment_id = mlflow.get_experiment_by_name(experiment_name).experiment_id
    mlflow.set_experiment(experiment_name)
    return experiment_id


def runs_table_url(base_url: str, experiment_id: str) -> str:
    """The UI page of an experiment's runs table, in the UI's model-training view.

    MLflow 3.17's UI chooses between its GenAI and model-training views from this query parameter
    (or the user's last choice), and reads the experiment's kind tag only where that switch is off.
    """
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def compare_url(base_url: str, experiment_ids: list[str], run_ids: list[str]) -> str:
    """The UI's compare view of these runs (MLflow 3's route: JSON lists of ids)."""
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps(experiment_ids)})
    return f"{base_url.rstrip('/')}/#/compare-runs?{query}"


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


# ---- one MLflow run per stage ----


@contextlib.contextmanager
def stage_run(
    project: paths.ProjectPaths,
    config: ParamsSchema,
    stage: str,
    run_name: str,
    experiment_name: str,
    overrides: list[str],
    run_id: str | None = None,
) -> Iterator[Any]:
    """Start (or, given run_id, resume) an MLflow run for a stage; KILLED on Ctrl-C, FAILED on error.

    Logging calls made through tracking.record during the stage that fail are listed in one warning
    line at the end, after the stage's outputs are written.
    """
    run = start_stage_run(project, stage, run_name, experiment_name, overrides, run_id)
    faults.record_failures(mlflow.get_tracking_uri())
    if run_id is None:
        record.config(config)
    else:
        record.tag(f"stage.{stage}", "done")
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        faults.end_run(status)
        if (active_sweep := sweep.current()) is not None and run_id is None:
            active_sweep.child_statuses.append(status)
        if status == "FINISHED":
            faults.set_log_later(log_later(project, stage, run.info.run_id))
        if summary := faults.failure_summary():
            print(summary, file=sys.stderr, flush=True)


def start_stage_run(
    project: paths.ProjectPaths,
    stage: str,
    run_name: str,
    experiment_name: str,
    overrides: list[str],
    run_id: str | None,
) -> Any:
    """The stage's MLflow run, new or resumed; a store that fails here stops the stage in one line
    naming it and what it answered (checked before, so this is a server failing between the calls)."""
    uri = tracking_uri(project)
    try:
        experiment_id = use_experiment(project, experiment_name)
        if run_id is not None:
            return mlflow.start_run(run_id=run_id)
        tags = run_tags(project, stage, overrides)
        if os.environ.get("DVC_EXP_NAME"):
            run_name = f"{run_name} (dvc exp {os.environ['DVC_EXP_NAME']})"
        if (active_sweep := sweep.current()) is not None:
            if active_sweep.parent_run_id is None:
                parent_tags = run_tags(project, stage, active_sweep.overrides)
                active_sweep.start_parent(experiment_id, parent_tags)
            tags[MLFLOW_PARENT_RUN_ID] = active_sweep.parent_run_id
        return mlflow.start_run(run_name=run_name, tags=tags)
    except faults.LOGGING_ERRORS as error:
        message = " ".join(str(error).split())[:300]
        fix = "fix the server, or unset MLFLOW_TRACKING_URI to use the local mlflow.db"
        if not faults.is_remote(uri):
            fix = "check that no other process holds the store, then run again"
        raise FashionCnnError(
            f"MLflow tracking store {uri} failed as the {stage} stage started its run ({message}); "
            f"nothing was run: {fix}"
        ) from None


def log_later(project: paths.ProjectPaths, stage: str, run_id: str) -> str:
    """How a finished stage's records that did not reach MLflow can be logged once the store answers."""
    if stage == "train":
        on_disk = ", ".join(
            str(path.relative_to(project.root))
            for path in (project.model_dir, project.train_metrics_file, project.history_file)
        )
        return (
            f"the model and metrics are on disk ({on_disk}); once the server answers, "
            f"`{LOG_TRAINING_COMMAND}` logs them into MLflow run {run_id}"
        )
    return (
        f"the stage's outputs are on disk; once the server answers, `dvc repro --force --single-item "
        f"{stage}` runs it again and logs it"
    )


def pipeline_run(project: paths.ProjectPaths, config: ParamsSchema, stage: str) -> Any:
    """The MLflow run of a stage that trains no model (download, prepare, memory, seed_figures):
    named after the stage, in tracking.pipeline_experiment_name, tagged with the command's overrides."""
    return stage_run(
        project, config, stage, stage, config.tracking.pipeline_experiment_name, hydra_overrides()
    )


@contextlib.contextmanager
def completing_run(run_id: str) -> Iterator[None]:
    """Resume a run to log what it lacks (tools/log_training): it ends FINISHED only when every call
    made through tracking.record went through; else it ends FAILED and a FashionCnnError names the cause."""
    uri = mlflow.get_tracking_uri()
    faults.record_failures(uri)
    try:
        mlflow.start_run(run_id=run_id)
    except faults.LOGGING_ERRORS as error:
        cause = " ".join(str(error).split())[:300]
    else:
        status = "FAILED"
        try:
            yield
            cause = faults.failure_cause()
            status = "FAILED" if cause else "FINISHED"
        finally:
            faults.end_run(status)
    if cause:
        raise FashionCnnError(
            f"logging into MLflow run {run_id} at {uri} failed ({cause}); the run is marked FAILED until "
            f"this succeeds: run `{LOG_TRAINING_COMMAND}` again once the server answers"
        )
