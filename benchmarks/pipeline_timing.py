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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.workers import run_worker
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.reproduction.clean_copy import make_clean_copy
from fashion_cnn.tools.reproduce import profile_overrides

# DVC prints this line when it starts a stage's command (and nothing per stage when all is up to date).
STAGE_STARTED = re.compile(r"^Running stage '([^']+)'")
# The bound on a no-op `dvc repro` (everything up to date), in seconds: issue #20's (issue #7 had 3 s).
NOOP_TARGET_SECONDS = 2.0
NOOP_REPEATS = 3


def measure_stage(root: Path, scratch: Path, job: dict[str, Any]) -> dict[str, Any]:
    """The whole train stage (`python -m fashion_cnn.stages.train`, params.yaml as is), stopped early."""
    import mlflow

    stage_root = scratch / "stage-project"
    make_clean_copy(root, stage_root, profile_overrides(root, "default"))
    (stage_root / "data").mkdir()
    (stage_root / "data" / "prepared").symlink_to(Path(job["prepared"]).resolve(), target_is_directory=True)
    tracking_uri = f"sqlite:///{stage_root / 'mlflow.db'}"
    # Earlier stages of `dvc repro` create the store; so does this, outside the measured process.
    mlflow.MlflowClient(tracking_uri).search_experiments()
    print(f"[stage] python -m fashion_cnn.stages.train, stopped after {job['warmup'] + job['steps']} steps")
    environment = {"FASHION_CNN_ROOT": str(stage_root), "MLFLOW_TRACKING_URI": tracking_uri}
    return run_worker({**job, "kind": "stage"}, scratch / "stage.log", environment, stage_root)


@dataclass(frozen=True)
class ReproRun:
    """One `dvc repro`: its seconds and each line it printed, with the second (from its start) it arrived."""

    seconds: float
    lines: list[tuple[float, str]]

    @property
    def starts(self) -> list[tuple[str, float]]:
        """(stage, second it started) for each stage DVC ran, in order."""
        return stage_starts(self.lines)

    @property
    def up_to_date(self) -> bool:
        """Whether DVC found everything up to date."""
        return any("Data and pipelines are up to date" in line for _, line in self.lines)


def stage_starts(lines: list[tuple[float, str]]) -> list[tuple[str, float]]:
    """(stage, second) of each "Running stage" line among (second, line) pairs, in order."""
    return [(match.group(1), moment) for moment, line in lines if (match := STAGE_STARTED.match(line))]


def stage_seconds(starts: list[tuple[str, float]], total: float) -> dict[str, float]:
    """Each stage's wall seconds: from its "Running stage" line to the next one, the last one's to `total`.

    That is its command plus DVC hashing and caching its outputs.
    """
    ends = [moment for _, moment in starts[1:]] + [total]
    return {name: end - begin for (name, begin), end in zip(starts, ends, strict=True)}


def repro_environment(workdir: Path) -> dict[str, str]:
    """The environment of a timed `dvc repro` in `workdir`, a clean copy of some checkout."""
    # This interpreter's `python` and `dvc` first, unbuffered so that each stage's line arrives when it is
    # printed; the stages import the copy's own src/ (the code DVC hashes, whichever checkout it came
    # from); without $FASHION_CNN_ROOT and $MLFLOW_TRACKING_URI they use the copy and its own mlflow.db.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    environment = {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1"}
    environment["PYTHONPATH"] = str(workdir / "src")
    for name in ("FASHION_CNN_ROOT", "MLFLOW_TRACKING_URI"):
        environment.pop(name, None)
    return environment


def timed_repro(workdir: Path, log_path: Path) -> ReproRun:
    """Run `dvc repro` in `workdir`, appending its output to `log_path`; FashionCnnError when it fails."""
    started, lines = time.perf_counter(), []
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with (
        open(log_path, "a") as log,
        subprocess.Popen(["dvc", "repro"], cwd=workdir, env=repro_environment(workdir), **output) as dvc,
    ):
        for line in dvc.stdout:
            log.write(line)
            lines.append((time.perf_counter() - started, line))
    if dvc.returncode != 0:
        tail = "".join(line for _, line in lines[-20:])
        raise FashionCnnError(f"`dvc repro` failed in {workdir} (exit {dvc.returncode}):\n{tail}")
    return ReproRun(time.perf_counter() - started, lines)


def spread_of(values: list[float]) -> dict[str, Any]:
    """{median, min, max, runs} of some seconds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def time_noop(workdir: Path, log_path: Path, repeats: int = NOOP_REPEATS) -> dict[str, Any]:
    """Time `dvc repro` with everything up to date, `repeats` times; FashionCnnError if a stage reruns."""
    noop_seconds = []
    for _ in range(repeats):
        run = timed_repro(workdir, log_path)
        if run.starts or not run.up_to_date:
            reran = [name for name, _ in run.starts]
            raise FashionCnnError(f"a second `dvc repro` reran {reran}: the pipeline is not idempotent")
        noop_seconds.append(run.seconds)
    return spread_of(noop_seconds)


def time_pipeline(root: Path, profile: str, scratch: Path) -> dict[str, Any]:
    """Reproduce `profile` from nothing in a clean copy, then time `dvc repro` with everything up to date."""
    workdir = Path(tempfile.mkdtemp(prefix=f"fashion-cnn-bench-{profile}-", dir=scratch))
    log_path = scratch / f"dvc-repro-{profile}.log"
    try:
        make_clean_copy(root, workdir, profile_overrides(root, profile))
        print(f"[pipeline] dvc repro of the {profile} profile in {workdir} (log: {log_path})", flush=True)
        run = timed_repro(workdir, log_path)
        noop = time_noop(workdir, log_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    starts = run.starts
    return {
        "profile": profile,
        "repro_seconds": run.seconds,
        "dvc_startup_seconds": starts[0][1] if starts else run.seconds,
        "stage_seconds": stage_seconds(starts, run.seconds),
        "noop_seconds": noop,
        "noop_target_seconds": NOOP_TARGET_SECONDS,
        "noop_meets_target": noop["median"] < NOOP_TARGET_SECONDS,
    }
