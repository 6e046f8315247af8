"""The pipeline as a whole: the train stage in its own process, and the time of each `dvc repro` stage."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.workers import run_worker
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.tools.reproduce import make_clean_copy

# DVC prints this line when it starts a stage's command (and nothing per stage when all is up to date).
STAGE_STARTED = re.compile(r"^Running stage '([^']+)'")
NOOP_TARGET_SECONDS = 3.0
NOOP_REPEATS = 3


def measure_stage(root: Path, scratch: Path, job: dict[str, Any]) -> dict[str, Any]:
    """The whole train stage (`python -m fashion_cnn.stages.train`, params.yaml as is), stopped early."""
    import mlflow

    stage_root = scratch / "stage-project"
    make_clean_copy(root, stage_root, "default")
    (stage_root / "data").mkdir()
    (stage_root / "data" / "prepared").symlink_to(Path(job["prepared"]).resolve(), target_is_directory=True)
    tracking_uri = f"sqlite:///{stage_root / 'mlflow.db'}"
    # Earlier stages of `dvc repro` create the store; so does this, outside the measured process.
    mlflow.MlflowClient(tracking_uri).search_experiments()
    print(f"[stage] python -m fashion_cnn.stages.train, stopped after {job['warmup'] + job['steps']} steps")
    environment = {"FASHION_CNN_ROOT": str(stage_root), "MLFLOW_TRACKING_URI": tracking_uri}
    return run_worker({**job, "kind": "stage"}, scratch / "stage.log", environment, stage_root)


def timed_repro(workdir: Path, log_path: Path) -> tuple[float, list[tuple[str, float]], bool]:
    """Run `dvc repro`: its seconds, when each stage started, and whether DVC found everything up to date."""
    # This interpreter's `python` first, unbuffered so that each stage's line arrives when DVC prints it;
    # without $FASHION_CNN_ROOT and $MLFLOW_TRACKING_URI the stages use the copy and its own mlflow.db.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    environment = {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1"}
    for name in ("FASHION_CNN_ROOT", "MLFLOW_TRACKING_URI"):
        environment.pop(name, None)
    started, starts, lines = time.perf_counter(), [], []
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with (
        open(log_path, "a") as log,
        subprocess.Popen(["dvc", "repro"], cwd=workdir, env=environment, **output) as dvc,
    ):
        for line in dvc.stdout:
            log.write(line)
            lines.append(line)
            if match := STAGE_STARTED.match(line):
                starts.append((match.group(1), time.perf_counter() - started))
    if dvc.returncode != 0:
        raise FashionCnnError(
            f"`dvc repro` failed in {workdir} (exit {dvc.returncode}):\n{''.join(lines[-20:])}"
        )
    up_to_date = any("Data and pipelines are up to date" in line for line in lines)
    return time.perf_counter() - started, starts, up_to_date


def time_pipeline(root: Path, profile: str, scratch: Path) -> dict[str, Any]:
    """Reproduce `profile` from nothing in a clean copy, then time `dvc repro` with everything up to date."""
    workdir = Path(tempfile.mkdtemp(prefix=f"fashion-cnn-bench-{profile}-", dir=scratch))
    log_path = scratch / f"dvc-repro-{profile}.log"
    try:
        make_clean_copy(root, workdir, profile)
        print(f"[pipeline] dvc repro of the {profile} profile in {workdir} (log: {log_path})", flush=True)
        total, starts, _ = timed_repro(workdir, log_path)
        noop_seconds = []
        for _ in range(NOOP_REPEATS):
            seconds, reran, up_to_date = timed_repro(workdir, log_path)
            if reran or not up_to_date:
                raise FashionCnnError(f"a second `dvc repro` reran {reran}: the pipeline is not idempotent")
            noop_seconds.append(seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # A stage's time runs from its "Running stage" line to the next one (its command plus DVC hashing and
    # caching its outputs); the last stage's until dvc exits.
    ends = [moment for _, moment in starts[1:]] + [total]
    median = statistics.median(noop_seconds)
    return {
        "profile": profile,
        "repro_seconds": total,
        "dvc_startup_seconds": starts[0][1] if starts else total,
        "stage_seconds": {name: end - begin for (name, begin), end in zip(starts, ends, strict=False)},
        "noop_seconds": {
            "median": median,
            "min": min(noop_seconds),
            "max": max(noop_seconds),
            "runs": noop_seconds,
        },
        "noop_target_seconds": NOOP_TARGET_SECONDS,
        "noop_meets_target": median < NOOP_TARGET_SECONDS,
    }
