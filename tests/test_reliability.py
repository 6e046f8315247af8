"""Reliability: bad params and bad data stop a real stage with one line; unsafe code forms stay out.

Every bad-params case of issue #9 runs through a stage's real entry point (`main`, the function
`python -m fashion_cnn.stages.<stage>` calls: Hydra parses the overrides, the schema validates, the CLI
wrapper prints) in its own copy of the project whose data/ and reports/ hold files that must stay
untouched. TensorFlow takes ~10 s of CPU to import, so the cases share one interpreter that imports
the stages once and calls `main` per case; the commonest mistake (a typo in a key) also runs as its
own `python -m fashion_cnn.stages.train` process.
The faults (signals, resume, locks, a full disk) are in test_faults.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_synthetic_raw, stage_process

from fashion_cnn import errors
from fashion_cnn.data import fetch, splits
from fashion_cnn.data.idx import encode_idx
from fashion_cnn.stages import prepare
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
# What a stage writes: nothing under these may change when its params are bad.
OUTPUT_DIRS = ("data", "reports")

# Calls each case's stage `main` in one interpreter; argv: cases.json results.json.
BATCH_RUNNER = """
import contextlib, importlib, io, json, os, sys
from hydra.core.global_hydra import GlobalHydra
cases_file, results_file = sys.argv[1:3]
cases = json.load(open(cases_file))
results = {}
for case in cases:
    module = importlib.import_module("fashion_cnn.stages." + case["stage"])
    os.chdir(case["project"])
    os.environ.update(FASHION_CNN_ROOT=case["project"], MLFLOW_TRACKING_URI=case["tracking_uri"])
    sys.argv = [module.__file__, *case["overrides"]]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            module.main()
            code = 0
        except SystemExit as stop:
            code = stop.code or 0
    GlobalHydra.instance().clear()
    results[case["name"]] = {"code": code, "stderr": stderr.getvalue()}
import tensorflow as tf
results["gpus"] = len(tf.config.list_physical_devices("GPU"))
json.dump(results, open(results_file, "w"))
"""

# Lines that are not ours and not errors: TensorFlow's C++ runtime writes absl info and warning
# lines while it is imported ("I0000 00:00:... cudart_stub.cc:31] Could not find cuda drivers";
# TF_CPP_MIN_LOG_LEVEL does not silence them in TF 2.21, tensorflow/tensorflow#100442), and MLflow
# announces a new SQLite store ("INFO mlflow.store.db.utils: Creating initial MLflow database
# tables..."). Any other line on stderr fails the test.
NOTICE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    r"|To enable the following instructions:"
    r"|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\.store\.db\.utils: )"
)


# ---- the cases ----


def replace_in_params(old: str, new: str) -> Callable[[Path], None]:
    """A setup that edits the copy's params.yaml by hand, as a user would."""

    def edit(project: Path) -> None:
        params_file = project / "params.yaml"
        text = params_file.read_text()
        assert old in text
        params_file.write_text(text.replace(old, new, 1))

    return edit


@dataclass(frozen=True)
class Case:
    """A stage run that must stop with one `error:` line containing every fragment."""

    stage: str
    overrides: tuple[str, ...]
    fragments: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    # The problem shows only in the data, after the stage opened its MLflow run: that run must end
    # FAILED. Otherwise no run (no store) may exist and no output may change.
    opens_run: bool = False
    # Runs again as its own `python -m fashion_cnn.stages.<stage>` process.
    subprocess: bool = False
    # The case in plain words, for docs/reliability.md.
    what: str = ""


ALLOWED_TOP_LEVEL = "allowed here: data, model, seed, tracking, train"

# The line of params.yaml the unparseable-YAML case breaks (its error names the line).
BATCH_SIZE_LINE = (Path(__file__).resolve().parents[1] / "params.yaml").read_text().splitlines().index(
    "  batch_size: 32"
) + 1

# Every bad-params case of the issue: typos, wrong types, non-positive sizes, dropout outside
# [0, 1), unknown names, shapes that shrink to nothing, learning rate <= 0, a split larger than the
# data, no sources, unparseable YAML; plus a GPU asked for where there is none.
BAD_PARAMS = {
    "typo-top-level-key": Case(
        "train",
        ("trian.epochs=3",),
        ("unknown key 'trian.epochs'", ALLOWED_TOP_LEVEL),
        subprocess=True,
        what="typo in a top-level key (trian.epochs=3)",
    ),
    "typo-layer-key": Case(
        "train",
        ("model.layers.0.filter=3",),
        ("unknown key 'model.layers.0.filter'", "filters, kernel_size"),
        what="typo in a layer's key (model.layers.0.filter=3)",
    ),
    "typo-added-key": Case(
        "train",
        ("+train.epoch=3",),
        ("unknown key 'train.epoch'", "epochs"),
        what="typo in an added key (+train.epoch=3)",
    ),
    "typo-in-params-yaml": Case(
        "train",
        (),
        ("unknown key 'train.epoch'", "epochs"),
        replace_in_params("  epochs: 10", "  epoch: 10"),
        what="typo in a key of params.yaml (epoch: 10)",
    ),
    "wrong-type-integer": Case(
        "train",
        ("train.epochs=ten",),
        ("train.epochs = 'ten'", "valid integer"),
        what="text where an integer belongs (train.epochs=ten)",
    ),
    "wrong-type-float-for-integer": Case(
        "train",
        ("train.batch_size=32.5",),
        ("train.batch_size = 32.5", "valid integer"),
        what="a fraction where an integer belongs (train.batch_size=32.5)",
    ),
    "wrong-type-boolean": Case(
        "train",
        ("train.deterministic=maybe",),
        ("train.deterministic = 'maybe'", "valid boolean"),
        what="neither true nor false (train.deterministic=maybe)",
    ),
    "wrong-type-list": Case(
        "train",
        ("model.input_shape=28",),
        ("model.input_shape = 28", "valid list"),
        what="a number where a list belongs (model.input_shape=28)",
    ),
    "filters-zero": Case(
        "train",
        ("model.layers.0.filters=0",),
        ("model.layers.0.filters = 0", "greater than 0"),
        what="a convolution with 0 filters",
    ),
    "kernel-size-negative": Case(
        "train",
        ("model.layers.2.kernel_size=-3",),
        ("model.layers.2.kernel_size = -3", "greater than 0"),
        what="a negative kernel size",
    ),
    "units-zero": Case(
        "train",
        ("model.layers.9.units=0",),
        ("model.layers.9.units = 0", "greater than 0"),
        what="a dense layer with 0 units",
    ),
    "batch-size-zero": Case(
        "train", ("train.batch_size=0",), ("train.batch_size = 0", "greater than 0"), what="batch size 0"
    ),
    "epochs-negative": Case(
        "train",
        ("train.epochs=-1",),
        ("train.epochs = -1", "greater than 0"),
        what="a negative number of epochs",
    ),
    "dropout-one": Case(
        "train",
        ("model.layers.10.rate=1.0",),
        ("model.layers.10.rate = 1.0", "less than 1"),
        what="dropout rate 1.0",
    ),
    "dropout-negative": Case(
        "train",
        ("model.layers.12.rate=-0.1",),
        ("model.layers.12.rate = -0.1", "greater than or equal to 0"),
        what="a negative dropout rate",
    ),
    "activation": Case(
        "train",
        ("model.layers.9.activation=relu6",),
        ("model.layers.9.activation = 'relu6'", "'relu', 'elu'"),
        what="an unknown activation (relu6)",
    ),
    "padding": Case(
        "train",
        ("model.layers.0.padding=full",),
        ("model.layers.0.padding = 'full'", "'same' or 'valid'"),
        what="an unknown padding (full)",
    ),
    "optimizer": Case(
        "train",
        ("train.optimizer=adamw",),
        ("train.optimizer = 'adamw'", "'nadam', 'adam', 'sgd' or 'rmsprop'"),
        what="an unknown optimizer (adamw)",
    ),
    "layer-type": Case(
        "train",
        ("model.layers.1.type=pool",),
        ("model.layers.1.type = 'pool'", "max_pool, avg_pool"),
        what="an unknown layer type (pool)",
    ),
    "model-preset": Case(
        "train",
        ("model=resnet",),
        ("model=resnet", "lenet5, seed_cnn, small_cnn"),
        what="an unknown model preset (model=resnet)",
    ),
    "pooling-shrinks-to-zero": Case(
        "train",
        ("model.layers.1.pool_size=29",),
        ("model.layers.1.pool_size = 29", "28x28 input to 0x0"),
        what="pooling that shrinks the image to nothing",
    ),
    "valid-convolution-shrinks-to-zero": Case(
        "train",
        ("model=lenet5", "model.layers.2.kernel_size=15"),
        ("model.layers.2.kernel_size = 15", "to 0x0"),
        what="a 'valid' convolution that shrinks the image to nothing",
    ),
    "learning-rate-zero": Case(
        "train",
        ("train.learning_rate=0",),
        ("train.learning_rate = 0", "greater than 0"),
        what="learning rate 0",
    ),
    "learning-rate-negative": Case(
        "train",
        ("train.learning_rate=-0.001",),
        ("train.learning_rate = -0.001", "greater than 0"),
        what="a negative learning rate",
    ),
    "validation-size-zero": Case(
        "prepare",
        ("data.validation_size=0",),
        ("data.validation_size = 0", "greater than 0"),
        what="a validation split of 0 images",
    ),
    # The copy's synthetic raw data has 120 training images: the split is checked against them.
    "split-larger-than-data": Case(
        "prepare",
        ("data.validation_size=500",),
        ("data.validation_size = 500", "smaller than the 120 training images"),
        opens_run=True,
        what="a validation split larger than the training images",
    ),
    "no-sources": Case(
        "download",
        ("data.sources=[]",),
        ("data.sources = []", "at least 1 item"),
        what="no download sources (data.sources=[])",
    ),
    "override-syntax": Case(
        "train",
        ("train.epochs=[1",),
        ("override 'train.epochs=[1'",),
        what="an override that does not parse (train.epochs=[1)",
    ),
    "unparseable-params-yaml": Case(
        "train",
        (),
        (f"params.yaml:{BATCH_SIZE_LINE}: not valid YAML (mapping values are not allowed here)",),
        replace_in_params("  batch_size: 32\n", "  batch_size: 32: 5\n"),
        what="params.yaml that is not valid YAML",
    ),
    "gpu-without-one": Case(
        "train",
        ("train.device=gpu",),
        ("train.device = 'gpu'", "sees no GPU", "allowed: auto, cpu, gpu"),
        what="train.device=gpu on a machine without a GPU",
    ),
}


def edit_split(name: str, edit: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    """A setup that rewrites data/prepared/<name>.npz after `edit` changed its arrays in place."""

    def setup(project: Path) -> None:
        path = project / "data" / "prepared" / f"{name}.npz"
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        edit(arrays)
        splits.save_npz(path, **arrays)

    return setup


def put_nan(arrays: dict[str, np.ndarray]) -> None:
    arrays["images"][7, 3, 4, 0] = np.nan


def edit_raw(name: str, edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """A setup that replaces data/raw/<name>.gz by `edit` of its decompressed IDX bytes."""

    def setup(project: Path) -> None:
        path = project / "data" / "raw" / f"{name}.gz"
        path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes())), mtime=0))

    return setup


def corrupt_mirror(project: Path) -> None:
    """mirror/: synthetic training images of the real file's size that are not Fashion-MNIST's.

    Only the checksum tells them apart, and no real dataset is needed for this case.
    """
    expected = fetch.FILES[0]
    header_bytes = 16  # IDX magic number and three dimensions
    count, remainder = divmod(expected.size - header_bytes, 28 * 28)
    assert remainder == 0, expected
    images = encode_idx(np.zeros((count, 28, 28), np.uint8))  # (60000, 28, 28): all black
    mirror = project / "mirror"
    mirror.mkdir()
    (mirror / f"{expected.name}.gz").write_bytes(gzip.compress(images, compresslevel=1, mtime=0))


# Bad data, each through the stage where it enters, naming the file (opens_run: the stage has
# started when it reads its inputs). The same cases at function level are in test_prepare.py and
# test_download.py; damaged files (empty, truncated, flipped bytes, wrong dtype or shape, of another
# run) are test_damaged_files.py's table.
BAD_DATA = {
    "prepared-nan": Case(
        "train",
        (),
        ("data/prepared/train.npz", "NaN"),
        edit_split("train", put_nan),
        opens_run=True,
        what="a NaN in the prepared training images",
    ),
    "raw-label-outside-0-9": Case(
        "prepare",
        ("data.validation_size=20",),
        ("t10k-labels-idx1-ubyte.gz", "label 10 at index 0 is outside 0..9"),
        edit_raw("t10k-labels-idx1-ubyte", lambda content: content[:8] + b"\x0a" + content[9:]),
        opens_run=True,
        what="a raw test label outside 0..9",
    ),
    "download-checksum-mismatch": Case(
        "download",
        ("data.sources=[{project}/mirror]",),
        ("mirror/train-images-idx3-ubyte.gz: checksum mismatch",),
        corrupt_mirror,
        opens_run=True,
        what="a mirror file of the right size with other content",
    ),
}

CASES = {**BAD_PARAMS, **BAD_DATA}


# ---- running them ----


def snapshot(project: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under data/ and reports/ (hidden temp files included): mtime and SHA-256."""
    return {
        str(path.relative_to(project)): (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for folder in OUTPUT_DIRS
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    }


def run_statuses(store: Path) -> list[str]:
    """Statuses of every MLflow run in a SQLite store (read directly: importing MLflow takes seconds)."""
    with contextlib.closing(sqlite3.connect(store)) as database:
        return [status for (status,) in database.execute("SELECT status FROM runs")]


@dataclass
class StageRun:
    """One case's stage run: its project copy, the files before, exit code and stderr after."""

    project: Path
    store: Path
    before: dict[str, tuple[int, bytes]]
    code: int = -1
    stderr: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


def make_template(directory: Path, project_copier) -> Path:
    """A project copy whose outputs exist: synthetic raw and prepared data, a model, reports."""
    project = project_copier(directory)
    make_synthetic_raw(project / "data" / "raw")
    params = ProjectConfig.from_params(yaml.safe_load((project / "params.yaml").read_text()))
    prepare.prepare(
        project / "data" / "raw",
        project / "data" / "prepared",
        params.data.model_copy(update={"validation_size": 20}),
    )
    placeholders = {
        "data/model/model.keras": "a trained model stands here\n",
        "data/model/mlflow_run.json": '{"run_id": "0"}\n',
        "reports/metrics.json": '{"test": {"accuracy": 0.9}}\n',
        "reports/train/history.csv": "epoch,loss\n1,0.5\n",
    }
    for name, text in placeholders.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    return project


def subprocess_environment() -> dict[str, str]:
    """The test environment without a developer's mirror or root (module fixtures run before autouse ones)."""
    environment = {key: value for key, value in os.environ.items() if key not in ("FASHION_CNN_MIRROR",)}
    environment.pop("FASHION_CNN_ROOT", None)
    environment["DVC_NO_ANALYTICS"] = "1"
    return environment


def run_module(run: StageRun, case: Case) -> None:
    """The case's stage with its overrides in the case's copy, as a user runs it."""
    environment = subprocess_environment() | {"MLFLOW_TRACKING_URI": f"sqlite:///{run.store}"}
    overrides = [item.format(project=run.project) for item in case.overrides]
    result = stage_process(case.stage, *overrides, cwd=run.project, env=environment)
    run.code, run.stderr = result.returncode, result.stderr


def run_batch(runs: dict[str, StageRun], directory: Path) -> dict:
    """Every case through its stage's `main` in one interpreter; returns its results by case name."""
    cases = [
        {
            "name": name,
            "stage": CASES[name].stage,
            "project": str(run.project),
            "overrides": [item.format(project=run.project) for item in CASES[name].overrides],
            "tracking_uri": f"sqlite:///{run.store}",
        }
        for name, run in runs.items()
    ]
    (directory / "cases.json").write_text(json.dumps(cases))
    result = subprocess.run(
        [sys.executable, "-c", BATCH_RUNNER, str(directory / "cases.json"), str(directory / "results.json")],
        cwd=directory, env=subprocess_environment(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((directory / "results.json").read_text())


def prepare_run(base: Path, name: str, template: Path, store: Path) -> StageRun:
    """A fresh copy of the template for one case, set up and snapshotted."""
    project = base / name / "project"
    shutil.copytree(template, project, symlinks=True)
    case = CASES[name.removesuffix(":python-m")]
    if case.setup:
        case.setup(project)
    return StageRun(project, store, snapshot(project))


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory: pytest.TempPathFactory, project_copier) -> dict[str, StageRun]:
    """Every case run once through its stage's entry point; the `subprocess` ones also as `python -m`."""
    base = tmp_path_factory.mktemp("reliability")
    template = make_template(base / "template", project_copier)
    # Bad params must not even create a store, so each has its own; the data cases share one.
    shared_store = base / "data-cases-mlflow.db"
    runs = {
        name: prepare_run(base, name, template, shared_store if case.opens_run else base / name / "mlflow.db")
        for name, case in CASES.items()
    }
    separate = {
        f"{name}:python-m": prepare_run(base, f"{name}:python-m", template, base / f"{name}-python-m.db")
        for name, case in CASES.items()
        if case.subprocess
    }
    with concurrent.futures.ThreadPoolExecutor(max_workers=1 + len(separate)) as pool:
        batch = pool.submit(run_batch, runs, base)
        for future in [
            pool.submit(run_module, run, CASES[name.split(":")[0]]) for name, run in separate.items()
        ]:
            future.result()
        results = batch.result()
    for name, run in runs.items():
        run.code, run.stderr = results[name]["code"], results[name]["stderr"]
        run.extra["gpus"] = results["gpus"]
    for run in separate.values():
        run.extra["gpus"] = results["gpus"]
    return runs | separate


def check_error_line(run: StageRun, case: Case) -> None:
    """Exit code 1 and exactly one `error:` line naming key/file, value and what is allowed."""
    assert run.code == 1, run.stderr
    ours = [line for line in run.stderr_lines if not NOTICE.match(line)]
    assert len(ours) == 1, run.stderr
    line = ours[0]
    assert line.startswith("error: "), line
    for fragment in case.fragments:
        assert fragment in line, line
    # A person can read it: not a config dump or a traceback squeezed into one line.
    assert len(line) < 600, line


ALL_RUNS = [*CASES, *(f"{name}:python-m" for name, case in CASES.items() if case.subprocess)]


def marked(names: list[str], sees: Callable[[Case], str]) -> list:
    """The runs as table rows, each with its reliability marker (docs/reliability.md)."""
    rows = []
    for name in names:
        case = CASES[name.split(":")[0]]
        where = f"{case.stage} (as its own python -m process)" if ":" in name else case.stage
        what = f"{where}: {case.what}"
        rows.append(pytest.param(name, marks=pytest.mark.reliability(case=what, sees=sees(case)), id=name))
    return rows


def error_line_sees(case: Case) -> str:
    """'one `error:` line with: <first fragment>; exit 1', the fragment shortened to fit a table cell."""
    fragment = case.fragments[0]
    if len(fragment) > 60:
        fragment = fragment[:57].rsplit(" ", 1)[0] + " ..."
    return f"one `error:` line with: {fragment}; exit 1"


@pytest.mark.parametrize("name", marked(ALL_RUNS, error_line_sees))
def test_bad_input_stops_the_stage_with_one_error_line(name: str, stage_runs) -> None:
    run, case = stage_runs[name], CASES[name.split(":")[0]]
    if name.startswith("gpu-without-one") and run.extra["gpus"]:
        pytest.skip("this machine has a GPU, so train.device=gpu is valid here")
    check_error_line(run, case)


@pytest.mark.parametrize(
    "name",
    marked(
        [name for name in ALL_RUNS if not CASES[name.split(":")[0]].opens_run],
        lambda case: "no file under data/ or reports/ changes; no MLflow store is created",
    ),
)
def test_bad_params_touch_no_output_and_start_no_mlflow_run(name: str, stage_runs) -> None:
    run = stage_runs[name]
    if name.startswith("gpu-without-one") and run.extra["gpus"]:
        pytest.skip("this machine has a GPU, so train.device=gpu is valid here")
    assert snapshot(run.project) == run.before
    # Validation comes before the stage opens its MLflow run: no store was even created.
    assert not run.store.exists()


@pytest.mark.reliability(
    case="bad data found after a stage opened its MLflow run (each bad-data case)",
    sees="the run ends FAILED; none is left RUNNING",
)
def test_bad_data_ends_every_mlflow_run_failed_none_left_running(stage_runs) -> None:
    opened = [name for name in CASES if CASES[name].opens_run]
    statuses = run_statuses(stage_runs[opened[0]].store)
    assert statuses == ["FAILED"] * len(opened)


@pytest.mark.reliability(
    case="prepare: a validation split larger than the training images",
    sees="no prepared file is written or changed",
)
def test_split_larger_than_the_data_writes_no_prepared_file(stage_runs) -> None:
    run = stage_runs["split-larger-than-data"]
    after = snapshot(run.project)
    assert {name: value for name, value in after.items() if name.startswith("data/prepared")} == {
        name: value for name, value in run.before.items() if name.startswith("data/prepared")
    }
    assert after == run.before


def test_checks_detect_a_touched_output(tmp_path: Path) -> None:
    """The snapshot comparison above can fail: rewriting a file with the same bytes changes it."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x").write_text("same\n")
    before = snapshot(tmp_path)
    os.utime(tmp_path / "data" / "x", ns=(1, 1))
    assert snapshot(tmp_path) != before


# ---- a full disk: one line naming the file, no partial file ----

NO_SPACE = "could not write it: No space left on device (free space on that disk, then rerun)"


@pytest.mark.reliability(
    case="disk full while saving prepared arrays",
    sees="one line naming the file, 'No space left on device'; no partial file left",
)
def test_full_disk_saving_prepared_arrays(small_tmpfs, tmp_path: Path) -> None:
    folder = tmp_path / "prepared"
    small_tmpfs(folder, "64k")
    target = folder / "train.npz"
    with pytest.raises(errors.FashionCnnError) as raised:
        # (100, 28, 28, 1) float32: 314 KB on a 64 KiB disk.
        splits.save_npz(target, images=np.zeros((100, 28, 28, 1), np.float32), labels=np.zeros(100, np.uint8))
    assert str(raised.value) == f"{target}: {NO_SPACE}; no partial file was left"
    assert list(folder.iterdir()) == []


@pytest.mark.reliability(
    case="disk full while saving the trained model",
    sees="one line naming the file; the previous model stays, no temp file",
)
def test_full_disk_saving_a_model_keeps_the_previous_one(small_tmpfs, make_config, tmp_path: Path) -> None:
    from fashion_cnn.model.architecture import build_model

    folder = tmp_path / "model"
    small_tmpfs(folder, "64k")
    previous = folder / "model.keras"
    previous.write_bytes(b"the previous model\n")
    # What train.train does with the trained model: 61,130 parameters, about 750 KB.
    model = build_model(make_config("model=small_cnn").model)
    no_space = pytest.raises(errors.FashionCnnError, match=re.escape(f"{previous}: {NO_SPACE}"))
    with no_space, atomic.atomic_path(previous, suffix=".keras") as temp_path:
        model.save(temp_path)
    assert previous.read_bytes() == b"the previous model\n"
    assert [path.name for path in folder.iterdir()] == ["model.keras"]


@pytest.mark.reliability(
    case="Ctrl-C or SIGTERM while a group of outputs is being written",
    sees="the writes finish first, then the stage stops",
)
def test_signals_during_a_group_of_writes_wait_until_it_is_written() -> None:
    written = []
    with pytest.raises(KeyboardInterrupt), atomic.signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        written.append("first")
        os.kill(os.getpid(), signal.SIGTERM)
        written.append("second")
    assert written == ["first", "second"]
    # The handlers are back: Ctrl-C interrupts at once again.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        written.append("never")
    assert written == ["first", "second"]


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(
            failure,
            marks=pytest.mark.reliability(
                case=f"{what} in the middle of writing files that belong together",
                sees="none of them replaced: the old set stays, no temp file",
            ),
            id=failure,
        )
        for failure, what in (("full disk", "disk full"), ("interrupt", "Ctrl-C"))
    ],
)
def test_files_written_together_are_all_replaced_or_none_is(
    failure: str, small_tmpfs, tmp_path: Path
) -> None:
    folder = tmp_path / "prepared"
    small_tmpfs(folder, "64k")
    first, second = folder / "train.npz", folder / "stats.npz"
    for path in (first, second):
        splits.save_npz(path, values=np.zeros(4, np.uint8))
    before = {path.name: path.read_bytes() for path in (first, second)}
    expected = errors.FashionCnnError if failure == "full disk" else KeyboardInterrupt
    with pytest.raises(expected), atomic.together():
        splits.save_npz(first, values=np.ones(4, np.uint8))  # written, its rename held back
        if failure == "interrupt":
            os.kill(os.getpid(), signal.SIGINT)
        splits.save_npz(second, values=np.ones((100, 28, 28), np.float32))  # 314 KB: does not fit
    # Nothing replaced, no temp file left: the old pair is still a consistent pair.
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    # Without a failure both are replaced.
    with atomic.together():
        splits.save_npz(first, values=np.ones(4, np.uint8))
        splits.save_npz(second, values=np.ones(4, np.uint8))
    assert sorted(path.name for path in folder.iterdir()) == ["stats.npz", "train.npz"]
    assert all(splits.load_npz(path, ("values",))["values"].sum() == 4 for path in (first, second))


# ---- unsafe forms must not come back ----

SAFETY_SCAN = ("src", "benchmarks", "tests", "Makefile", ".ci", ".github", "dvc.yaml", "pyproject.toml")
# name -> pattern. This file is not scanned: it spells the forms out.
UNSAFE_FORMS = {
    # Unpickling runs code from the file.
    "pickle": r"\b(c?pickle|dill|cloudpickle)\b",
    "np.load with pickle": r"allow_pickle\s*=\s*True",
    # yaml.load without SafeLoader builds arbitrary Python objects.
    "yaml.load": r"yaml\.(load|load_all)\((?![^)]*Loader\s*=\s*yaml\.C?SafeLoader)",
    "unsafe yaml": r"yaml\.(unsafe_load|full_load)|Loader\s*=\s*yaml\.(Unsafe|Full)?Loader\b",
    # A shell would interpret values that come from params.
    "shell=True": r"shell\s*=\s*True",
    # Strings run as code, or as a shell command.
    "eval/exec": r"(?<![\w.])(eval|exec)\(",
    "os.system": r"\bos\.(system|popen)\(",
    # Servers bind to 127.0.0.1 only: no other address after a host or bind.
    "all interfaces": r"0\.0\.0\.0|\[::\]",
    "non-loopback bind": r"(?i)\b(host|bind)\W{1,6}(?!127\.0\.0\.1)\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}",
    # A .keras file may hold Python lambdas; safe mode refuses to run them.
    "keras unsafe mode": r"safe_mode\s*=\s*False|enable_unsafe_deserialization",
    "keras load without safe_mode=True": r"keras\.(saving|models)\.load_model\((?![^)]*safe_mode\s*=\s*True)",
    # Model loaders that do not refuse code in the artifact; the project loads models only through
    # trained_model.load_model (Keras safe mode). Tests may read back what they just logged.
    "other model loader": r"mlflow\.(pyfunc|keras|tensorflow)\.load_model|saved_model\.load\(",
}
# Forms that only the project's own code (not its tests) must avoid.
PRODUCT_ONLY_FORMS = ("other model loader",)


def unsafe_lines(paths: list[Path]) -> list[str]:
    """'file:line: form: text' for every unsafe form in `paths` (files or folders of text files)."""
    found = []
    for top in paths:
        files = sorted(top.rglob("*")) if top.is_dir() else [top]
        for path in files:
            generated = any(part.endswith(".egg-info") or part == "__pycache__" for part in path.parts)
            if (
                generated
                or not path.is_file()
                or path.suffix in (".png", ".pyc")
                or path.name == Path(__file__).name
            ):
                continue
            text = path.read_text(errors="replace")
            # A call may wrap its arguments over lines: join them, so `load_model(\n path, safe_mode=True)`
            # is read whole.
            joined = re.sub(r"\(\s*\n\s*", "(", text)
            in_tests = (
                "tests" in path.relative_to(top if top.is_dir() else top.parent).parts or top.name == "tests"
            )
            for number, line in enumerate(joined.splitlines(), start=1):
                for name, pattern in UNSAFE_FORMS.items():
                    if in_tests and name in PRODUCT_ONLY_FORMS:
                        continue
                    if re.search(pattern, line):
                        found.append(f"{path}:{number}: {name}: {line.strip()}")
    return found


def test_no_unsafe_forms_in_the_source_tree() -> None:
    offending = unsafe_lines([REPO_ROOT / item for item in SAFETY_SCAN if (REPO_ROOT / item).exists()])
    assert offending == [], "\n".join(offending)


def test_the_safety_scan_finds_each_unsafe_form(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    lines = [
        "import " + "pickle",
        "np.load(path, allow_pickle" + "=True)",
        "yaml." + "load(text)",
        "yaml.load(text, Loader=yaml." + "Loader)",
        "subprocess.run(command, shell" + "=True)",
        "server.bind(('0.0.0" + ".0', 80))",
        "keras.saving.load_model(path, safe_mode" + "=False)",
        "keras.models.load_model(" + "path)",
        "ev" + "al(text)",
        "ex" + "ec(code)",
        "os.sys" + "tem(command)",
        "mlflow.pyfunc.load" + "_model(uri)",
        "tf.saved_model.lo" + "ad(path)",
        "server = make_server(host='10.0" + ".0.5', port=80)",
        "socket.bind(('[:" + ":]', 80))",
    ]
    planted.write_text("\n".join(lines) + "\n")
    found = unsafe_lines([planted])
    assert {int(item.split(":")[1]) for item in found} == set(range(1, len(lines) + 1)), found
    safe = tmp_path / "safe.py"
    safe.write_text(
        "yaml.safe_load(text)\nnp.load(path, allow_pickle=False)\n"
        "keras.saving.load_model(\n    path, compile=False, safe_mode=True\n)\nhost = '127.0.0.1'\n"
        "model.evaluate(images)\nos.execve(command[0], command, environment)\n"
    )
    assert unsafe_lines([safe]) == []
