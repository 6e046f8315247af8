"""Faults in a real `dvc repro`: Ctrl-C and SIGTERM in every stage, two repros at once, a full disk.

Each scenario starts from its own tiny project (small_cnn, 500 training images, 5 epochs): an
interruption must exit non-zero, end the stage's MLflow run KILLED and leave nothing DVC or a later
stage would take for finished; the next `dvc repro` must redo exactly that stage and complete, and an
interrupted training must resume where it stopped and end with the metrics of a run that never
stopped.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import DATASET_DIR, needs_dataset
from stage_runner import run_stage

from fashion_cnn.data import fetch
from fashion_cnn.training import loop

DVC = str(Path(sys.executable).parent / "dvc")
EPOCHS = 5
# The four pipeline stages the issue names; memory and the figure stages are not needed here.
TARGET = "evaluate"

pytestmark = [
    pytest.mark.slow,
    needs_dataset,
]


def tiny_params(project: Path) -> None:
    """small_cnn on 500 training, 200 validation, 200 test images for EPOCHS epochs, from the local mirror."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"] = yaml.safe_load((project / "conf" / "model" / "small_cnn.yaml").read_text())
    params["data"].update(
        sources=[str(DATASET_DIR)], validation_size=200, max_train_images=500, max_test_images=200
    )
    params["train"].update(epochs=EPOCHS, batch_size=50)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def start_repro(project: Path, *arguments: str, mirror: str | None = None) -> subprocess.Popen[str]:
    """`dvc repro ...` in its own process group, as a terminal runs it (Ctrl-C reaches the whole group)."""
    environment = os.environ.copy()
    environment.pop(fetch.MIRROR_ENV_VAR, None)
    if mirror:
        environment[fetch.MIRROR_ENV_VAR] = mirror
    return subprocess.Popen(
        [DVC, "repro", *arguments], cwd=project, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def finish(process: subprocess.Popen[str], seen: str = "") -> tuple[int, str]:
    """Wait for the process; its exit code and all its output."""
    rest, _ = process.communicate(timeout=600)
    return process.returncode, seen + rest


def interrupt_after_line(
    process: subprocess.Popen[str], ready: Callable[[str], bool], signal_number: int
) -> tuple[int, str]:
    """Read output until a line shows the stage at work, then signal the process group."""
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if ready(line):
                break
        else:
            raise AssertionError("the pipeline ended before the stage started its work:\n" + "".join(seen))
        os.killpg(process.pid, signal_number)
        return finish(process, "".join(seen))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll until `condition()` holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def run_status(store: Path, run_id: str) -> str:
    with contextlib.closing(sqlite3.connect(store)) as database:
        return database.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]


def latest_stage_run(store: Path, stage: str) -> tuple[str, str]:
    """(run id, status) of the newest MLflow run tagged with this stage."""
    query = (
        "SELECT runs.run_uuid, runs.status FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
        "WHERE tags.key = 'stage' AND tags.value = ? ORDER BY runs.start_time DESC LIMIT 1"
    )
    with contextlib.closing(sqlite3.connect(store)) as database:
        return database.execute(query, (stage,)).fetchone()


def locked_stages(project: Path) -> set[str]:
    """The stages dvc.lock records as done."""
    lock_file = project / "dvc.lock"
    return set(yaml.safe_load(lock_file.read_text())["stages"]) if lock_file.exists() else set()


def leftovers(project: Path) -> list[str]:
    """Temp files of atomic writes (`.<name>.<random>.tmp` / `.keras`) anywhere under data/ and reports/."""
    return [
        str(path)
        for folder in ("data", "reports")
        for path in (project / folder).rglob(".*")
        if path.is_file() and path.name != ".gitignore"
    ]


def history_without_seconds(path: Path) -> list[list[str]]:
    with open(path) as file:
        return [row[:-1] for row in csv.reader(file)]


@pytest.fixture
def slow_mirror(http_mirror) -> Iterator:
    """The HTTP mirror serving the real files in 'slow' mode: a request hangs until release is set."""
    for item in fetch.FILES:
        http_mirror.files[item.name] = (DATASET_DIR / f"{item.name}.gz").read_bytes()
    http_mirror.server.slow_seconds = 300
    yield http_mirror


@pytest.fixture
def tiny_project(dvc_project: Path, git_commit) -> Path:
    """The DVC project copy with tiny_params committed; its MLflow store is STORE_NAME in tmp_path."""
    tiny_params(dvc_project)
    git_commit(dvc_project, "tiny params")
    return dvc_project


# conftest points MLFLOW_TRACKING_URI at tmp_path / STORE_NAME.
STORE_NAME = "mlflow.db"


def raw_files_are_the_dataset(project: Path) -> bool:
    """Whether data/raw holds exactly the four dataset files."""
    return all(
        (project / "data/raw" / f"{item.name}.gz").read_bytes()
        == (DATASET_DIR / f"{item.name}.gz").read_bytes()
        for item in fetch.FILES
    )


def interrupt_training_after_epoch_one(project: Path) -> tuple[int, str]:
    """`dvc repro` up to evaluate, Ctrl-C once training saved its checkpoint after epoch 1."""
    checkpoint_dir = project / "checkpoints" / "train"

    def epoch_one_saved(line: str) -> bool:
        if not line.startswith(f"epoch 1/{EPOCHS}"):
            return False
        wait_for((checkpoint_dir / "resume_state_0001.json").exists, "the checkpoint after epoch 1")
        return True

    return interrupt_after_line(start_repro(project, TARGET), epoch_one_saved, signal.SIGINT)


@pytest.mark.reliability(
    case="a second `dvc repro` while one runs",
    sees="the second is refused, naming the PID that holds the stage; the first completes",
)
def test_a_second_repro_is_refused_while_the_first_runs(tiny_project: Path, slow_mirror) -> None:
    slow_url = slow_mirror.url("slow")
    first = start_repro(tiny_project, "download", mirror=slow_url)
    wait_for(lambda: slow_mirror.requests, "the first download request")
    second_code, second_output = finish(start_repro(tiny_project, "download", mirror=slow_url))
    assert second_code != 0
    # DVC's read/write lock on the stage's outputs names the process holding them.
    assert "'data/raw' is busy, it is being blocked by:" in second_output.replace(str(tiny_project) + "/", "")
    assert f"(PID {first.pid}): " in second_output, second_output
    slow_mirror.server.release.set()
    first_code, first_output = finish(first)
    assert first_code == 0, first_output
    assert locked_stages(tiny_project) == {"download"}
    assert raw_files_are_the_dataset(tiny_project)


@pytest.mark.reliability(
    case="Ctrl-C during download (a request hanging on a slow mirror)",
    sees="one `error: interrupted` line, run KILLED; the next repro downloads again and completes",
)
def test_ctrl_c_during_download_ends_its_run_killed(tiny_project: Path, slow_mirror, tmp_path: Path) -> None:
    process = start_repro(tiny_project, "download", mirror=slow_mirror.url("slow"))
    wait_for(lambda: slow_mirror.requests, "the download request")
    os.killpg(process.pid, signal.SIGINT)
    code, output = finish(process)
    assert code != 0
    assert "error: interrupted; no output of this stage was completed" in output, output
    assert latest_stage_run(tmp_path / STORE_NAME, "download")[1] == "KILLED"
    assert locked_stages(tiny_project) == set()
    slow_mirror.server.release.set()
    # Nothing interrupted is taken for finished: the next repro (params' own sources) downloads.
    code, output = finish(start_repro(tiny_project, "download"))
    assert code == 0, output
    assert "Running stage 'download'" in output, output
    assert locked_stages(tiny_project) == {"download"}
    assert raw_files_are_the_dataset(tiny_project)


@pytest.mark.reliability(
    case="SIGTERM during prepare",
    sees="stage stops, run KILLED, only download recorded as done; raw files intact",
)
def test_sigterm_during_prepare_leaves_only_download_done(tiny_project: Path, tmp_path: Path) -> None:
    code, output = interrupt_after_line(
        start_repro(tiny_project, TARGET), lambda line: "preparing" in line, signal.SIGTERM
    )
    assert code != 0
    assert "Running stage 'download'" in output and "interrupted" in output, output
    assert raw_files_are_the_dataset(tiny_project)
    assert locked_stages(tiny_project) == {"download"}
    assert latest_stage_run(tmp_path / STORE_NAME, "prepare")[1] == "KILLED"
    assert leftovers(tiny_project) == []


@pytest.mark.reliability(
    case="Ctrl-C during training, after the checkpoint of epoch 1",
    sees="no model, run KILLED, train not recorded as done; the checkpoint is neither DVC's nor git's",
)
def test_ctrl_c_during_training_leaves_no_model_and_keeps_the_checkpoint(
    tiny_project: Path, tmp_path: Path
) -> None:
    code, output = interrupt_training_after_epoch_one(tiny_project)
    assert code != 0
    assert "Running stage 'prepare'" in output and "interrupted" in output, output
    assert locked_stages(tiny_project) == {"download", "prepare"}
    assert not (tiny_project / "data/model/model.keras").exists()
    assert latest_stage_run(tmp_path / STORE_NAME, "train")[1] == "KILLED"
    assert (tiny_project / "checkpoints" / "train").is_dir()
    untracked = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=tiny_project,
        capture_output=True,
        text=True,
    ).stdout
    assert "checkpoints" not in untracked
    assert leftovers(tiny_project) == []


@pytest.mark.reliability(
    case="the repro after an interrupted training; SIGTERM during evaluate",
    sees="training resumes after the saved epoch; evaluate's run KILLED; the next repro redoes evaluate only",
)
def test_the_next_repro_resumes_training_and_then_redoes_only_an_interrupted_evaluate(
    tiny_project: Path, tmp_path: Path
) -> None:
    store = tmp_path / STORE_NAME
    code, output = interrupt_training_after_epoch_one(tiny_project)
    assert code != 0 and locked_stages(tiny_project) == {"download", "prepare"}, output

    code, output = interrupt_after_line(
        start_repro(tiny_project, TARGET), lambda line: line.startswith("evaluating "), signal.SIGTERM
    )
    assert code != 0, output
    resumed = [line for line in output.splitlines() if line.startswith("resuming after epoch ")]
    assert len(resumed) == 1, output
    completed = int(resumed[0].split()[3])
    assert 1 <= completed < EPOCHS
    epochs_run = [line.split()[1].rstrip(":") for line in output.splitlines() if line.startswith("epoch ")]
    assert epochs_run == [f"{epoch}/{EPOCHS}" for epoch in range(completed + 1, EPOCHS + 1)]
    assert not (tiny_project / "checkpoints").exists()
    assert locked_stages(tiny_project) == {"download", "prepare", "train"}
    assert not (tiny_project / "reports/metrics.json").exists()
    run_id = json.loads((tiny_project / "data/model/mlflow_run.json").read_text())["run_id"]
    assert run_status(store, run_id) == "KILLED"

    code, output = finish(start_repro(tiny_project, TARGET))
    assert code == 0, output
    assert "Running stage 'evaluate'" in output and "Running stage 'train'" not in output, output
    assert locked_stages(tiny_project) == {"download", "prepare", "train", "evaluate"}
    assert json.loads((tiny_project / "reports/metrics.json").read_text())["test"]["images"] == 200
    assert run_status(store, run_id) == "FINISHED"
    assert leftovers(tiny_project) == []
    status = subprocess.run([DVC, "status", TARGET], cwd=tiny_project, capture_output=True, text=True)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout + status.stderr
    with contextlib.closing(sqlite3.connect(store)) as database:
        steps = database.execute(
            "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'val_accuracy' ORDER BY step", (run_id,)
        ).fetchall()
    # The resumed run logged the epochs before the interruption too.
    assert [step for (step,) in steps] == list(range(1, EPOCHS + 1))

    # Resumed = uninterrupted: the same params trained in one go give the same numbers.
    resumed_history = history_without_seconds(tiny_project / "reports/train/history.csv")
    resumed_metrics = json.loads((tiny_project / "reports/train/metrics.json").read_text())
    assert [row[0] for row in resumed_history[1:]] == [str(epoch) for epoch in range(1, EPOCHS + 1)]
    result = run_stage("train", cwd=tiny_project, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" not in result.stdout
    assert history_without_seconds(tiny_project / "reports/train/history.csv") == resumed_history
    uninterrupted_metrics = json.loads((tiny_project / "reports/train/metrics.json").read_text())
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert uninterrupted_metrics[key] == resumed_metrics[key], key


# ---- a full disk ----


@pytest.mark.reliability(
    case="disk full while the prepare stage writes its arrays",
    sees="one `error:` line naming the file, 'No space left on device'; no partial file; run FAILED",
)
def test_full_disk_while_preparing_is_one_line_and_leaves_no_partial_file(
    project: Path, synthetic_raw, small_tmpfs, tmp_path: Path
) -> None:
    raw_dir = project / "data" / "raw"
    raw_dir.mkdir(parents=True)
    for path in synthetic_raw.directory.iterdir():
        (raw_dir / path.name).write_bytes(path.read_bytes())
    prepared_dir = project / "data" / "prepared"
    # 64 KiB: the 100 training images (314 KB as float32) do not fit.
    small_tmpfs(prepared_dir, "64k")
    result = run_stage("prepare", "data.validation_size=20", cwd=project)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {prepared_dir / 'train.npz'}: could not write it: No space left on device "
        f"(free space on that disk, then rerun); no partial file was left"
    ], result.stderr
    assert "Traceback" not in result.stderr
    assert list(prepared_dir.iterdir()) == []
    assert latest_stage_run(tmp_path / "mlflow.db", "prepare")[1] == "FAILED"


# ---- a checkpoint is resumed only by the run it was written for ----


@pytest.mark.reliability(
    case="a checkpoint left by an interrupted run with other params",
    sees="'discarding the checkpoint in ...' line; training starts again from epoch 1",
)
def test_a_checkpoint_of_other_params_is_discarded_not_resumed(make_config, tmp_path: Path, capsys) -> None:
    import mlflow
    import numpy as np

    from fashion_cnn.data.splits import Split
    from fashion_cnn.training import checkpoint, runtime

    checkpoint_dir = tmp_path / "checkpoints" / "train"
    checkpoint_dir.mkdir(parents=True)
    # What an interrupted run with other params leaves: 3 epochs done.
    (checkpoint_dir / checkpoint.FINGERPRINT_FILE).write_text("0" * 64)  # a SHA-256, not this run's
    (checkpoint_dir / checkpoint.KERAS_METADATA_FILE).write_text('{"epoch": 3, "batch": 0}')
    config = make_config("model=small_cnn", "train.epochs=1")
    generator = np.random.default_rng(0)
    split = Split(
        generator.standard_normal((64, 28, 28, 1)).astype(np.float32),
        generator.integers(0, 10, size=64).astype(np.uint8),
    )
    settings = runtime.resolve_runtime(config.train, "CPU", None)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    with mlflow.start_run():
        _, rows = loop.fit(config, split, split, settings, None, checkpoint_dir=checkpoint_dir)
    printed = capsys.readouterr().out
    assert f"discarding the checkpoint in {checkpoint_dir}" in printed
    assert "resuming" not in printed
    assert [row["epoch"] for row in rows] == [1]
    # Now the folder holds this run's checkpoint.
    expected = checkpoint.fingerprint(config, split.images, split.labels, split.images, split.labels)
    assert (checkpoint_dir / checkpoint.FINGERPRINT_FILE).read_text() == expected
    assert json.loads((checkpoint_dir / checkpoint.KERAS_METADATA_FILE).read_text())["epoch"] == 1
