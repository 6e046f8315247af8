"""Wall time of each `dvc repro` stage (in a clean temp copy of a profile) and of a no-op `dvc repro`."""

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

from fashion_cnn.config import FashionCnnError
from fashion_cnn.reproduce import make_clean_copy

# DVC prints this line when it starts a stage's command (and nothing per stage when all is up to date).
STAGE_STARTED = re.compile(r"^Running stage '([^']+)'")
UP_TO_DATE = "Data and pipelines are up to date"
NOOP_TARGET_SECONDS = 3.0


def pipeline_environment() -> dict[str, str]:
    """The environment for dvc: this interpreter's `python` first, line-buffered output, no leaks.

    $FASHION_CNN_ROOT and $MLFLOW_TRACKING_URI would point the stages at another checkout or
    server; without them each stage uses the temp copy and its own mlflow.db.
    """
    environment = dict(os.environ)
    for name in ("FASHION_CNN_ROOT", "MLFLOW_TRACKING_URI"):
        environment.pop(name, None)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    # Unbuffered: DVC's "Running stage" lines must arrive when printed, to be timestamped.
    environment["PYTHONUNBUFFERED"] = "1"
    environment["DVC_NO_ANALYTICS"] = "1"
    return environment


def timed_repro(workdir: Path, environment: dict[str, str], log_path: Path) -> dict[str, Any]:
    """Run `dvc repro` and timestamp each "Running stage" line as it arrives."""
    started = time.perf_counter()
    events: list[tuple[str, float]] = []
    lines: list[str] = []
    with (
        open(log_path, "a", buffering=1) as log,
        subprocess.Popen(
            ["dvc", "repro"],
            cwd=workdir,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process,
    ):
        for line in process.stdout:
            now = time.perf_counter() - started
            log.write(line)
            lines.append(line)
            if match := STAGE_STARTED.match(line):
                events.append((match.group(1), now))
    total = time.perf_counter() - started
    if process.returncode != 0:
        tail = "".join(lines[-20:])
        raise FashionCnnError(f"`dvc repro` failed in {workdir} (exit {process.returncode}):\n{tail}")
    # A stage lasts until the next one starts; the last until dvc exits (no stages: nothing ran).
    ends = [moment for _, moment in events[1:]] + [total] if events else []
    return {
        "total_seconds": total,
        "dvc_startup_seconds": events[0][1] if events else total,
        "stage_seconds": {name: end - begin for (name, begin), end in zip(events, ends, strict=True)},
        "up_to_date": any(UP_TO_DATE in line for line in lines),
    }


def time_pipeline(root: Path, profile: str, noop_repeats: int, scratch: Path) -> dict[str, Any]:
    """Reproduce `profile` from nothing in a clean copy, then time `dvc repro` with everything up to date."""
    workdir = Path(tempfile.mkdtemp(prefix=f"fashion-cnn-bench-{profile}-", dir=scratch))
    log_path = scratch / f"dvc-repro-{profile}.log"
    environment = pipeline_environment()
    try:
        make_clean_copy(root, workdir, profile)
        print(f"[pipeline] dvc repro of the {profile} profile in {workdir} (log: {log_path})", flush=True)
        full = timed_repro(workdir, environment, log_path)
        noop_runs = []
        for _ in range(noop_repeats):
            run = timed_repro(workdir, environment, log_path)
            if run["stage_seconds"] or not run["up_to_date"]:
                raise FashionCnnError(
                    f"a second `dvc repro` reran {sorted(run['stage_seconds'])}: the pipeline is not "
                    f"idempotent (log: {log_path})"
                )
            noop_runs.append(run["total_seconds"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "profile": profile,
        "repro_seconds": full["total_seconds"],
        "dvc_startup_seconds": full["dvc_startup_seconds"],
        "stage_seconds": full["stage_seconds"],
        "noop_seconds": {
            "median": statistics.median(noop_runs),
            "min": min(noop_runs),
            "max": max(noop_runs),
            "runs": noop_runs,
        },
        "noop_target_seconds": NOOP_TARGET_SECONDS,
        "noop_meets_target": statistics.median(noop_runs) < NOOP_TARGET_SECONDS,
        "note": "a stage's time runs from DVC's 'Running stage' line to the next one: its command plus "
        "DVC hashing and caching its outputs",
    }
