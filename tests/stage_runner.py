"""The one way the tests run a stage (run_stage), and the one snapshot that says nothing was touched.

Kept out of conftest.py so that a batch's fresh interpreter imports it without pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Hydra's logging set-up closes every logging handler there is, pytest's capture among them, so a
# stage run in the caller's interpreter leaves it off.
HYDRA_LOGGING_OFF = ("hydra/job_logging=none", "hydra/hydra_logging=none")
# A developer's settings that must not reach a stage of a test.
DEVELOPER_SETTINGS = ("FASHION_CNN_MIRROR", "FASHION_CNN_ROOT")

# Lines that are not ours and not errors: TensorFlow's C++ runtime writes absl info and warning
# lines while it is imported ("I0000 00:00:... cudart_stub.cc:31] Could not find cuda drivers";
# TF_CPP_MIN_LOG_LEVEL does not silence them in TF 2.21, tensorflow/tensorflow#100442), and MLflow
# announces a new SQLite store ("INFO mlflow.store.db.utils: Creating initial MLflow database
# tables..."). Any other line on stderr is the stage's.
NOTICE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    r"|To enable the following instructions:"
    r"|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\.store\.db\.utils: )"
)


@dataclass
class StageResult:
    """What a finished stage run left: exit code, what it printed, and the seconds it took."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


def stage_command(stage: str, *overrides: str) -> list[str]:
    """`python -m fashion_cnn.stages.<stage> <overrides>`: how DVC and a user start a stage."""
    return [sys.executable, "-m", f"fashion_cnn.stages.{stage}", *overrides]


def run_stage(
    stage: str,
    *overrides: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    in_process: bool = False,
) -> StageResult:
    """Run a stage to its end in `cwd` with `env` (None: this process's); a failure is returned, not raised.

    In its own process (stage_command) by default. in_process=True calls the stage's `main` here, as
    `python -m` does (argv, cwd, environment, SIGINT/SIGTERM handlers and Hydra put back after), so
    that many runs share one TensorFlow import; Hydra's logging is then off and `timeout` unused.
    """
    if in_process:
        return _run_stage_here(stage, list(overrides), Path(cwd), env)
    started = time.monotonic()
    finished = subprocess.run(
        stage_command(stage, *overrides), cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    return StageResult(finished.returncode, finished.stdout, finished.stderr, time.monotonic() - started)


def _run_stage_here(stage: str, overrides: list[str], cwd: Path, env: dict[str, str] | None) -> StageResult:
    """The stage's `main` in this interpreter, everything it changes in the process put back."""
    import mlflow
    from hydra.core.global_hydra import GlobalHydra

    module = importlib.import_module(f"fashion_cnn.stages.{stage}")
    saved_argv, saved_cwd, saved_environ = sys.argv, os.getcwd(), dict(os.environ)
    saved_handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    stdout, stderr = io.StringIO(), io.StringIO()
    sys.argv = [str(module.__file__), *overrides, *HYDRA_LOGGING_OFF]
    started = time.monotonic()
    try:
        os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            module.main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(bool(stop.code))
    finally:
        seconds = time.monotonic() - started
        GlobalHydra.instance().clear()
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environ)
        for number, handler in saved_handlers.items():
            signal.signal(number, handler)
        # MLflow remembers a stage's experiment; the next run may use another store, where it is not.
        mlflow.tracking.fluent._active_experiment_id = None
    return StageResult(code, stdout.getvalue(), stderr.getvalue(), seconds)


@dataclass(frozen=True)
class StageCall:
    """One run of a batch: the stage, its overrides, its folder and its whole environment."""

    stage: str
    overrides: tuple[str, ...]
    cwd: Path
    env: dict[str, str]


def run_stages_in_one_process(
    calls: dict[str, StageCall], directory: Path, timeout: float = 900
) -> tuple[dict[str, StageResult], int]:
    """Every call through run_stage(in_process=True) in one fresh interpreter (TensorFlow imported once,
    and what a stage leaves in its process stays there): the results by name, and the GPUs it saw."""
    calls_file, results_file = directory / "stage-calls.json", directory / "stage-results.json"
    calls_file.write_text(
        json.dumps({name: {**asdict(call), "cwd": str(call.cwd)} for name, call in calls.items()})
    )
    finished = subprocess.run(
        [sys.executable, "-m", "stage_runner", str(calls_file), str(results_file)],
        cwd=Path(__file__).parent, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads(results_file.read_text())
    gpus = results.pop("gpus")
    return {name: StageResult(**result) for name, result in results.items()}, gpus


def stage_environment(**settings: str) -> dict[str, str]:
    """This process's environment without a developer's mirror or root, plus `settings`.

    For module fixtures, which run before conftest's autouse isolation.
    """
    environment = {key: value for key, value in os.environ.items() if key not in DEVELOPER_SETTINGS}
    return environment | {"DVC_NO_ANALYTICS": "1"} | settings


def snapshot(
    root: Path, folders: tuple[str, ...] = (".",), skip: tuple[str, ...] = ()
) -> dict[str, tuple[int, str]]:
    """mtime and SHA-256 of every file under `folders` of `root` (hidden ones too) by its path from
    `root`, but those whose path starts with one of `skip`."""
    return {
        relative: (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file() and not (relative := path.relative_to(root).as_posix()).startswith(skip)
    }


def our_lines(stderr: str) -> list[str]:
    """A stage's own lines on stderr: all but TensorFlow's and MLflow's notices (NOTICE)."""
    return [line for line in stderr.strip().splitlines() if not NOTICE.match(line)]


def run_statuses(store: Path) -> list[str]:
    """Statuses of every MLflow run in a SQLite store (read directly: importing MLflow takes seconds)."""
    with contextlib.closing(sqlite3.connect(store)) as database:
        return [status for (status,) in database.execute("SELECT status FROM runs")]


def _main(calls_file: str, results_file: str) -> None:
    """run_stages_in_one_process's other side: each call of calls_file, the results to results_file."""
    calls = json.loads(Path(calls_file).read_text())
    results: dict[str, object] = {
        name: asdict(
            run_stage(call["stage"], *call["overrides"], cwd=call["cwd"], env=call["env"], in_process=True)
        )
        for name, call in calls.items()
    }
    import tensorflow as tf

    results["gpus"] = len(tf.config.list_physical_devices("GPU"))
    Path(results_file).write_text(json.dumps(results))


if __name__ == "__main__":
    _main(*sys.argv[1:3])
