"""The local MLflow store (issue #28): a damaged, foreign, read-only or locked mlflow.db stops the stage
that opens it with one line naming the file, what is wrong and what to do; exit 1, the store
byte-identical (mtime too), no output written. And the run history's backup restores.

Every case runs a real stage (prepare, which opens its MLflow run first; train for garbage, as the
issue found it) through its `main` in one interpreter (stage_runner.run_stages_in_one_process), each in its
own copy of a project and its own copy of one real MLflow store.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import copy_project, make_synthetic_raw
from stage_runner import StageCall, run_stages_in_one_process, snapshot, stage_environment

from fashion_cnn.stages import prepare
from fashion_cnn.tracking import store
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths

# An older MLflow's schema: a revision of the installed MLflow's migrations that is not its head.
OLDER_REVISION = "451aebb31d03"
# A revision no installed migration has: what a newer MLflow leaves.
NEWER_REVISION = "ffffffffffff"
# Where the store's fix is described; every "start over" line points there.
RESTORE = "restore a backup"


def set_revision(revision: str) -> Callable[[Path], None]:
    def edit(database: Path) -> None:
        with contextlib.closing(sqlite3.connect(database)) as connection, connection:
            connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))

    return edit


def cut_to(size: Callable[[int], int]) -> Callable[[Path], None]:
    def edit(database: Path) -> None:
        content = database.read_bytes()
        database.write_bytes(content[: size(len(content))])

    return edit


def garbage(database: Path) -> None:
    database.write_bytes(hashlib.sha256(b"garbage").digest() * (database.stat().st_size // 32))


def another_database(database: Path) -> None:
    database.unlink()
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("CREATE TABLE inventory (item TEXT, count INTEGER)")


@dataclass(frozen=True)
class StoreCase:
    """One damaged store: how to make it, the stage that meets it, what its line must say."""

    edit: Callable[[Path], None]
    says: tuple[str, ...]
    case: str
    sees: str
    stage: str = "prepare"


START_OVER = "restore a backup or move it aside; exit 1"
CASES = {
    "empty": StoreCase(
        lambda database: database.write_bytes(b""),
        ("empty file", RESTORE),
        "empty (0 bytes)",
        f"one line: mlflow.db, 'empty file', {START_OVER}",
    ),
    "first-8-KiB": StoreCase(
        cut_to(lambda size: 8192),
        ("truncated", "header says", RESTORE),
        "cut to its first 8 KiB",
        f"one line: mlflow.db, 'truncated' (size and header's), {START_OVER}",
    ),
    "half": StoreCase(
        cut_to(lambda size: size // 2),
        ("truncated", RESTORE),
        "truncated to half",
        f"one line: mlflow.db, 'truncated', {START_OVER}",
    ),
    "garbage": StoreCase(
        garbage,
        ("not an SQLite database", RESTORE),
        "garbage (train, as issue #28 found it)",
        f"one line: mlflow.db, 'not an SQLite database', {START_OVER}",
        stage="train",
    ),
    "not-mlflow": StoreCase(
        another_database,
        ("not an MLflow store", "inventory"),
        "another SQLite database",
        f"one line: mlflow.db, 'not an MLflow store', its tables, {START_OVER}",
    ),
    "older-schema": StoreCase(
        set_revision(OLDER_REVISION),
        ("older MLflow's schema", "make backup-runs", "mlflow db upgrade sqlite:///"),
        "an older MLflow's schema",
        "one line: mlflow.db, the revisions, back up then `mlflow db upgrade`; exit 1",
    ),
    "newer-schema": StoreCase(
        set_revision(NEWER_REVISION),
        ("does not know", "a newer MLflow", RESTORE),
        "a newer MLflow's schema (unknown revision)",
        "one line: mlflow.db, the revision, use that MLflow or start over; exit 1",
    ),
    "locked": StoreCase(
        lambda database: None,
        ("is locked", "stuck writer", "kill "),
        "locked by a stuck writer (20 s wait)",
        "one line: mlflow.db, the process holding it, `kill PID`; exit 1",
    ),
}
TABLE = [
    pytest.param(
        name, marks=pytest.mark.reliability(case=f"mlflow.db {case.case} ({case.stage})", sees=case.sees)
    )
    for name, case in CASES.items()
]
# A process that takes the store's write lock and keeps it, as a writer stuck mid-transaction does.
STUCK_WRITER = (
    "import sqlite3, sys, time\n"
    "database = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "database.execute('BEGIN IMMEDIATE')\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)
# Hydra's run folders are written by every run, by design; train's lock file too.
NOT_OUTPUTS = ("outputs/", "data/train.lock")


def log_a_run(uri: str, artifact_root: Path) -> str:
    """A finished run with a param, a metric and an artifact, logged by real MLflow; its id."""
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("history", artifact_location=artifact_root.as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_param("optimizer", "nadam")
        mlflow.log_metric("val_accuracy", 0.91)
        mlflow.log_text("what the run wrote", "notes.txt")
    return run.info.run_id


@dataclass
class CaseRun:
    """A case's project and store copy, their state before, the stage's exit code and stderr."""

    project: Path
    database: Path
    before: dict[str, tuple[int, str]]
    store_before: tuple[int, str]
    code: int = -1
    stderr: str = ""
    holder: int = 0  # the stuck writer's process id, for the locked case


def store_state(database: Path) -> tuple[int, str]:
    status = database.stat() if database.exists() else None
    content = database.read_bytes() if database.exists() else b""
    return (status.st_mtime_ns if status else 0, hashlib.sha256(content).hexdigest())


@pytest.fixture(scope="module")
def case_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CaseRun]:
    """Every case (and an intact store) run once through its stage in one interpreter."""
    base = tmp_path_factory.mktemp("store")
    template = copy_project(base / "template")
    project_paths = paths.ProjectPaths(template)
    make_synthetic_raw(project_paths.raw_dir)
    config = ProjectConfig.from_params(yaml.safe_load((template / "params.yaml").read_text()))
    prepare.prepare(
        project_paths.raw_dir,
        project_paths.prepared_dir,
        config.data.model_copy(update={"validation_size": 20}),
    )
    real_store = base / "real" / "mlflow.db"
    real_store.parent.mkdir()
    log_a_run(f"sqlite:///{real_store}", base / "real" / "mlartifacts")
    runs = {}
    for name in [*CASES, "intact"]:
        project = base / "cases" / hashlib.sha256(name.encode()).hexdigest()[:12]
        shutil.copytree(template, project)
        database = project.parent / f"{project.name}-store" / "mlflow.db"
        database.parent.mkdir()
        shutil.copy2(real_store, database)
        if name in CASES:
            CASES[name].edit(database)
        runs[name] = CaseRun(project, database, snapshot(project, skip=NOT_OUTPUTS), store_state(database))
    calls = {
        name: StageCall(
            CASES[name].stage if name in CASES else "prepare",
            ("data.validation_size=20",),
            run.project,
            stage_environment(MLFLOW_TRACKING_URI=f"sqlite:///{run.database}"),
        )
        for name, run in runs.items()
    }
    writer = subprocess.Popen(
        [sys.executable, "-c", STUCK_WRITER, str(runs["locked"].database)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "locked"
        results, _ = run_stages_in_one_process(calls, base)
    finally:
        writer.kill()
        writer.wait()
    for name, run in runs.items():
        run.code, run.stderr = results[name].returncode, results[name].stderr
    runs["locked"].holder = writer.pid
    return runs


def error_lines(stderr: str) -> list[str]:
    """The stage's own error lines (TensorFlow's and MLflow's notices are not errors)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
@pytest.mark.parametrize("name", TABLE)
def test_a_damaged_store_stops_the_stage_in_one_line_and_nothing_is_written(
    name: str, case_runs: dict[str, CaseRun]
) -> None:
    run, case = case_runs[name], CASES[name]
    assert run.code == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    lines = error_lines(run.stderr)
    assert len(lines) == 1 and run.stderr.strip().splitlines()[-1] == lines[0], run.stderr[-3000:]
    line = lines[0]
    assert line.startswith(f"error: MLflow store {run.database} "), line
    for words in case.says:
        assert words in line, (words, line)
    if name == "locked":
        assert f"process {run.holder} (" in line and f"kill {run.holder})" in line, line
    assert store_state(run.database) == run.store_before
    assert snapshot(run.project, skip=NOT_OUTPUTS) == run.before


@pytest.mark.slow
def test_an_intact_store_passes_and_the_stage_logs_into_it(case_runs: dict[str, CaseRun]) -> None:
    run = case_runs["intact"]
    assert run.code == 0, run.stderr[-3000:]
    with contextlib.closing(sqlite3.connect(run.database)) as connection:
        stages = [value for (value,) in connection.execute("SELECT value FROM tags WHERE key = 'stage'")]
    assert stages == ["prepare"]


def test_the_schema_head_is_mlflows_own() -> None:
    """The head read from MLflow's migration files is the one MLflow's own schema check asks for."""
    from mlflow.store.db import utils

    revisions = store.migration_revisions()
    assert store.schema_head(revisions) == utils._get_latest_schema_revision()
    assert OLDER_REVISION in revisions and NEWER_REVISION not in revisions


def test_a_missing_store_or_a_server_is_not_checked(tmp_path: Path) -> None:
    store.check_store(f"sqlite:///{tmp_path / 'not-yet' / 'mlflow.db'}")
    store.check_store("http://127.0.0.1:9")
    assert not (tmp_path / "not-yet").exists()
