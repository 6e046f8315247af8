"""What the project opens besides params and data (issue #28): Hydra's run folder (outputs/), the train
checkpoint folder (checkpoints/train), DVC's dvc.lock and cache, the MLflow UI's port. Unwritable,
damaged or taken, each stops the run with a line naming it, exit non-zero, and nothing already
produced is lost or half-written.

Every case runs the real program: a stage as `python -m` (download for Hydra, whose job never starts;
train on the tests' tiny data for the checkpoint), the real `dvc repro download` on a copy of the
project, or `python -m fashion_cnn.tools.ui`. A read-only disk is a read-only tmpfs (small_tmpfs):
chmod does not stop root.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DATASET_DIR, needs_dataset, tiny_arrays
from stage_runner import our_lines, run_stage, run_statuses, snapshot

from fashion_cnn.data import splits as data
from fashion_cnn.training.config import ProjectConfig

reliability = pytest.mark.reliability

# ---- Hydra's run folder: outputs/<date>/<time>, where every stage's run writes .hydra/ ----


def hydra_case(blocked: str, overrides: tuple[str, ...], case: str, sees: str):
    return pytest.param(blocked, overrides, marks=reliability(case=case, sees=sees), id=blocked)


@pytest.mark.parametrize(
    ("blocked", "overrides"),
    [
        hydra_case(
            "read-only",
            (),
            case="Hydra's run folder outputs/ on a read-only disk",
            sees="one line: outputs/<date>, 'Read-only file system', make it writable or hydra.run.dir=...",
        ),
        hydra_case(
            "file",
            (),
            case="outputs (Hydra's run folder) is a regular file",
            sees="one line: 'outputs is a file, not a folder', move it or hydra.run.dir=...; exit 1",
        ),
        hydra_case(
            "sweep-file",
            ("-m", "data.timeout_seconds=10,11"),
            case="multirun (Hydra's folder of a -m sweep) is a regular file",
            sees="one line: 'multirun is a file, not a folder', move it or hydra.sweep.dir=...; exit 1",
        ),
    ],
)
def test_a_hydra_run_folder_that_cannot_be_made_stops_the_stage_in_one_line(
    blocked: str, overrides: tuple[str, ...], project: Path, small_tmpfs, tmp_path: Path
) -> None:
    folder = project / ("multirun" if "-m" in overrides else "outputs")
    setting = "hydra.sweep.dir" if "-m" in overrides else "hydra.run.dir"
    if blocked == "read-only":
        small_tmpfs(folder, "64k", read_only=True)
        says = ("(Read-only file system)", f"make {folder} writable")
    else:
        folder.write_text("a file where Hydra's run folder belongs\n")
        says = (f"{folder} is a file, not a folder (Not a directory)", "move it aside")
    before = snapshot(project)
    result = run_stage("download", *overrides, cwd=project)
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = our_lines(result.stderr)
    assert line.startswith(f"error: {folder}/"), line
    assert all(text in line for text in says), line
    assert f"{setting}=<folder>" in line and "the stage did not start" in line, line
    # The stage never ran: nothing downloaded, no MLflow run opened, every file as it was.
    assert snapshot(project) == before
    assert not (project / "data").exists() and not (tmp_path / "mlflow.db").exists()


# ---- the train checkpoint folder (train.checkpoint=true) ----


@pytest.mark.slow
@reliability(
    case="checkpoints/ on a read-only disk, train.checkpoint=true",
    sees="one line before epoch 1: folder, OS error, make it writable or train.checkpoint=false; model kept",
)
def test_an_unwritable_checkpoint_folder_stops_train_before_the_first_epoch(
    project: Path, small_tmpfs, tmp_path: Path
) -> None:
    """On the tests' tiny data, as test_verdict prepares it; the previous run's outputs any bytes."""
    config = ProjectConfig.from_params(yaml.safe_load((project / "params.yaml").read_text()))
    splits, mean, std = data.split_and_standardize(
        *tiny_arrays(test_count=100), config.data.model_copy(update={"validation_size": 200})
    )
    data.save_prepared(project / "data/prepared", splits, mean, std)
    for name in ("data/model/model.keras", "data/model/mlflow_run.json", "reports/train/metrics.json"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(f"the previous run's {name}")
    small_tmpfs(project / "checkpoints", "64k", read_only=True)
    before = snapshot(project, ("data", "reports"))
    result = run_stage(
        "train",
        "model=small_cnn",
        "data.validation_size=200",
        "train.epochs=1",
        "train.checkpoint=true",
        cwd=project,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    # Refused in set_up: no training started, no lock or MLflow run, the previous model untouched.
    assert not [text for text in result.stdout.splitlines() if text.startswith("training ")], result.stdout
    assert snapshot(project, ("data", "reports")) == before
    store = tmp_path / "mlflow.db"
    assert not store.exists() or run_statuses(store) == []
    (line,) = our_lines(result.stderr)
    folder = project / "checkpoints" / "train"
    assert line.startswith(f"error: {folder}: the training checkpoint cannot be saved there "), line
    assert f"({project / 'checkpoints'}: Read-only file system)" in line, line
    assert "make it writable, or run with train.checkpoint=false" in line, line


# ---- DVC's own files: dvc.lock and the cache ----


def dvc(project: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The real dvc CLI of this venv in `project`; its result, whatever its exit code."""
    command = [sys.executable, "-m", "dvc", *arguments]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300, check=False)


def contents(project: Path) -> dict[str, str]:
    """SHA-256 of every file under data/ and reports/, and of dvc.lock, by path (mtimes left out)."""
    return {path: digest for path, (_, digest) in snapshot(project, ("data", "reports")).items()} | {
        "dvc.lock": hashlib.sha256((project / "dvc.lock").read_bytes()).hexdigest()
    }


@pytest.fixture
def downloaded(dvc_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DVC copy of the project after a real `dvc repro download` (the real files, from DATASET_DIR)."""
    monkeypatch.setenv("FASHION_CNN_MIRROR", str(DATASET_DIR))
    result = dvc(dvc_project, "repro", "download")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (dvc_project / "data" / "raw").is_dir()
    return dvc_project


# Not UTF-8 from its first byte (a lone continuation byte).
GARBAGE = b"\x89\xff\x00garbage" * 20


@pytest.mark.slow
@needs_dataset
@pytest.mark.parametrize(
    ("damage", "dvc_says"),
    [
        pytest.param(
            GARBAGE,
            "ERROR: unable to read: 'dvc.lock', is not valid utf-8",
            marks=reliability(
                case="dvc.lock overwritten with garbage bytes",
                sees="DVC's line: unable to read: 'dvc.lock', is not valid utf-8; exit 255, outputs kept",
            ),
            id="garbage",
        ),
        pytest.param(
            b"schema: '2.0'\nstages:\n  download: [unclosed\n",
            "'./dvc.lock' is invalid.",
            marks=reliability(
                case="dvc.lock that is not valid YAML (a bad merge, an edit)",
                sees="DVC's lines: './dvc.lock' is invalid, the line and column; exit 255, outputs kept",
            ),
            id="invalid-yaml",
        ),
    ],
)
def test_a_damaged_dvc_lock_stops_dvc_repro_and_loses_nothing(
    damage: bytes, dvc_says: str, downloaded: Path
) -> None:
    (downloaded / "dvc.lock").write_bytes(damage)
    before = snapshot(downloaded, ("data", "reports"))
    result = dvc(downloaded, "repro", "download")
    assert result.returncode == 255, result.stdout + result.stderr
    assert dvc_says in result.stderr, result.stderr
    # Nothing ran (every output's bytes and mtime as they were) and DVC left the damaged file to the user.
    assert "Running stage" not in result.stdout, result.stdout
    assert snapshot(downloaded, ("data", "reports")) == before
    assert (downloaded / "dvc.lock").read_bytes() == damage


@pytest.mark.slow
@needs_dataset
@reliability(
    case="DVC's cache folder (.dvc/cache) on a read-only disk",
    sees="DVC's line: failed to reproduce 'download': Read-only file system: '.dvc/cache/…'; exit 255",
)
def test_a_read_only_dvc_cache_stops_dvc_repro_and_loses_nothing(downloaded: Path, small_tmpfs) -> None:
    """DVC reruns the stage (its outputs are not in this empty cache), then cannot save them: the
    outputs are the same bytes again and dvc.lock is not changed."""
    cache = downloaded / ".dvc" / "cache"
    small_tmpfs(cache, "64k", read_only=True)
    before = contents(downloaded)
    result = dvc(downloaded, "repro", "download")
    assert result.returncode == 255, result.stdout + result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("ERROR: failed to reproduce 'download': [Errno 30] Read-only file system: "), line
    assert f"'{cache}/" in line, line
    assert contents(downloaded) == before


# ---- the MLflow UI's port (make ui) ----


@reliability(
    case="make ui on a port another program listens on",
    sees="one line: 127.0.0.1:<port>, 'Address already in use', MLFLOW_PORT=<port>; exit 1",
)
def test_a_port_in_use_stops_the_ui_in_one_line_before_any_address_is_printed(project: Path) -> None:
    """Before, the runs tables' addresses were printed, then `mlflow server` failed and exited 0."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        command = [sys.executable, "-m", "fashion_cnn.tools.ui", "--port", str(port)]
        result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    (line,) = our_lines(result.stderr)
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port} (Address already in use); "), line
    assert "make ui MLFLOW_PORT=<port>" in line, line
    assert not (project / "mlflow.db").exists()
