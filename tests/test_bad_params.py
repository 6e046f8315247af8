"""Bad params and bad data stop a real stage with one line, touching nothing: the one table of them.

Every case runs through a stage's real entry point (`main`, what `python -m fashion_cnn.stages.<stage>`
calls: Hydra parses the overrides, the stage validates the sections it reads, the CLI wrapper prints)
in its own copy of a project whose data/ and reports/ hold files that must stay untouched. The cases
share one interpreter (stage_runner.run_stages_in_one_process: TensorFlow is imported once); the
commonest mistake (a typo in a key) also runs as its own `python -m` process.
Damaged files are test_damaged_files.py's table; full disks and signals are test_reliability.py's.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_synthetic_raw
from stage_runner import (
    StageCall,
    StageResult,
    our_lines,
    run_stage,
    run_stages_in_one_process,
    run_statuses,
    snapshot,
    stage_environment,
)

from fashion_cnn.data import fetch, splits
from fashion_cnn.data.idx import encode_idx
from fashion_cnn.stages import prepare
from fashion_cnn.training.config import ProjectConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
# What a stage writes: nothing under these may change when its params are bad.
OUTPUT_DIRS = ("data", "reports")
ALLOWED_TOP_LEVEL = "allowed here: data, model, seed, tracking, train"
SOFTMAX_OUTPUT = "{type:dense,units:10,activation:softmax}"
# The line of params.yaml the unparseable-YAML case breaks (its error names the line).
BATCH_SIZE_LINE = (REPO_ROOT / "params.yaml").read_text().splitlines().index("  batch_size: 32") + 1


def layers(*layer_list: str) -> str:
    """An override that replaces the model's layers by `layer_list` (Hydra dicts) and a softmax output."""
    return f"model.layers=[{','.join([*layer_list, SOFTMAX_OUTPUT])}]"


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
    """Stage runs that must each stop with one `error:` line containing every fragment."""

    # The stages that must refuse it, each a run of its own: every one reads the section.
    stages: tuple[str, ...]
    overrides: tuple[str, ...]
    fragments: tuple[str, ...]
    # The case in plain words, for docs/reliability.md.
    what: str
    setup: Callable[[Path], None] | None = None
    # The problem shows only in the data, after the stage opened its MLflow run: that run must end
    # FAILED. Otherwise no run (no store) may exist and no output may change.
    opens_run: bool = False
    # The first stage runs again as its own `python -m fashion_cnn.stages.<stage>` process.
    python_m: bool = False


TRAIN, MEMORY, TRAIN_AND_MEMORY = ("train",), ("memory",), ("train", "memory")

# Typos, wrong types, values out of range, unknown names, architectures that shrink to nothing or
# miss a step, a split the data cannot give, no sources, unparseable YAML, a GPU where there is none.
BAD_PARAMS = {
    # ---- typos ----
    "typo-top-level-key": Case(
        TRAIN,
        ("trian.epochs=3",),
        ("unknown key 'trian.epochs'", ALLOWED_TOP_LEVEL),
        "typo in a top-level key (trian.epochs=3)",
        python_m=True,
    ),
    "typo-added-top-level-key": Case(
        ("download",),
        ("+trian.epochs=3",),
        ("unknown key 'trian'", "train"),
        "typo in an added top-level key (+trian.epochs=3)",
    ),
    "typo-layer-key": Case(
        TRAIN,
        ("model.layers.0.filter=3",),
        ("unknown key 'model.layers.0.filter'", "filters, kernel_size"),
        "typo in a layer's key (model.layers.0.filter=3)",
    ),
    "typo-added-key": Case(
        TRAIN,
        ("+train.epoch=3",),
        ("unknown key 'train.epoch'", "epochs"),
        "typo in an added key (+train.epoch=3)",
    ),
    "typo-in-params-yaml": Case(
        TRAIN,
        (),
        ("unknown key 'train.epoch'", "epochs"),
        "typo in a key of params.yaml (epoch: 10)",
        replace_in_params("  epochs: 10", "  epoch: 10"),
    ),
    "typo-augmentation-key": Case(
        TRAIN,
        ("+train.augmentation.vertical_flip=true",),
        ("unknown key 'train.augmentation.vertical_flip'", "allowed here: horizontal_flip, random_erasing"),
        "typo in an augmentation key (+train.augmentation.vertical_flip)",
    ),
    "key-of-another-layer-type": Case(
        TRAIN,
        (layers("{type:residual,filters:8,padding:valid}", "{type:flatten}"),),
        ("unknown key 'model.layers.0.padding'", "allowed here: activation, batch_norm_momentum, filters"),
        "a key the layer type does not have (residual padding)",
    ),
    # ---- wrong types ----
    "wrong-type-integer": Case(
        TRAIN,
        ("train.epochs=ten",),
        ("train.epochs = 'ten'", "valid integer"),
        "text where an integer belongs (train.epochs=ten)",
    ),
    "wrong-type-float-for-integer": Case(
        TRAIN,
        ("train.batch_size=32.5",),
        ("train.batch_size = 32.5", "valid integer"),
        "a fraction where an integer belongs (train.batch_size=32.5)",
    ),
    "wrong-type-boolean": Case(
        TRAIN,
        ("train.deterministic=maybe",),
        ("train.deterministic = 'maybe'", "valid boolean"),
        "neither true nor false (train.deterministic=maybe)",
    ),
    "wrong-type-list": Case(
        TRAIN,
        ("model.input_shape=28",),
        ("model.input_shape = 28", "valid list"),
        "a number where a list belongs (model.input_shape=28)",
    ),
    # ---- values out of range ----
    "filters-zero": Case(
        TRAIN,
        ("model.layers.0.filters=0",),
        ("model.layers.0.filters = 0", "greater than 0"),
        "a convolution with 0 filters",
    ),
    "residual-filters-zero": Case(
        TRAIN,
        (layers("{type:residual,filters:0}", "{type:flatten}"),),
        ("model.layers.0.filters = 0", "greater than 0"),
        "a residual block with 0 filters",
    ),
    "kernel-size-negative": Case(
        TRAIN,
        ("model.layers.2.kernel_size=-3",),
        ("model.layers.2.kernel_size = -3", "greater than 0"),
        "a negative kernel size",
    ),
    "units-zero": Case(
        TRAIN,
        ("model.layers.9.units=0",),
        ("model.layers.9.units = 0", "greater than 0"),
        "a dense layer with 0 units",
    ),
    "output-units": Case(
        TRAIN,
        ("model.layers.13.units=5",),
        ("model.layers.13", "units 10"),
        "an output layer without 10 units",
    ),
    "batch-size-zero": Case(
        TRAIN_AND_MEMORY, ("train.batch_size=0",), ("train.batch_size = 0", "greater than 0"), "batch size 0"
    ),
    "epochs-zero": Case(MEMORY, ("train.epochs=0",), ("train.epochs = 0", "greater than 0"), "0 epochs"),
    "epochs-negative": Case(
        TRAIN, ("train.epochs=-1",), ("train.epochs = -1", "greater than 0"), "a negative number of epochs"
    ),
    "dropout-one": Case(
        TRAIN_AND_MEMORY,
        ("model.layers.10.rate=1.0",),
        ("model.layers.10.rate = 1.0", "less than 1"),
        "dropout rate 1.0",
    ),
    "dropout-negative": Case(
        TRAIN,
        ("model.layers.12.rate=-0.1",),
        ("model.layers.12.rate = -0.1", "greater than or equal to 0"),
        "a negative dropout rate",
    ),
    "batch-norm-momentum-one": Case(
        TRAIN,
        (layers("{type:batch_norm,momentum:1.0}", "{type:flatten}"),),
        ("model.layers.0.momentum = 1.0", "less than 1"),
        "batch norm momentum 1.0",
    ),
    "learning-rate-zero": Case(
        TRAIN_AND_MEMORY,
        ("train.learning_rate=0",),
        ("train.learning_rate = 0", "greater than 0"),
        "learning rate 0",
    ),
    "learning-rate-negative": Case(
        TRAIN,
        ("train.learning_rate=-0.001",),
        ("train.learning_rate = -0.001", "greater than 0"),
        "a negative learning rate",
    ),
    "label-smoothing-one": Case(
        TRAIN,
        ("train.label_smoothing=1.0",),
        ("train.label_smoothing = 1.0", "less than 1"),
        "label smoothing 1.0",
    ),
    "shift-pixels-negative": Case(
        TRAIN,
        ("train.augmentation.shift_pixels=-1",),
        ("train.augmentation.shift_pixels = -1",),
        "a negative augmentation shift",
    ),
    # ---- unknown names ----
    "activation": Case(
        TRAIN,
        ("model.layers.9.activation=relu6",),
        ("model.layers.9.activation = 'relu6'", "'relu', 'elu'"),
        "an unknown activation on a dense layer (relu6)",
    ),
    "activation-convolution": Case(
        TRAIN,
        ("model.layers.0.activation=relux",),
        ("model.layers.0.activation = 'relux'", "'relu'"),
        "an unknown activation on a convolution (relux)",
    ),
    "activation-layer": Case(
        TRAIN,
        (layers("{type:activation,activation:relux}", "{type:flatten}"),),
        ("model.layers.0.activation = 'relux'", "'relu'"),
        "an unknown activation layer function (relux)",
    ),
    "padding": Case(
        TRAIN_AND_MEMORY,
        ("model.layers.0.padding=full",),
        ("model.layers.0.padding = 'full'", "'same' or 'valid'"),
        "an unknown padding (full)",
    ),
    "optimizer": Case(
        TRAIN,
        ("train.optimizer=adamw",),
        ("train.optimizer = 'adamw'", "'nadam', 'adam', 'sgd' or 'rmsprop'"),
        "an unknown optimizer (adamw)",
    ),
    "schedule": Case(
        TRAIN,
        ("train.schedule.name=linear",),
        ("train.schedule.name = 'linear'", "'one_cycle'"),
        "an unknown learning-rate schedule (linear)",
    ),
    "strategy": Case(
        TRAIN,
        ("train.strategy=horovod",),
        ("train.strategy = 'horovod'", "'multi_worker'"),
        "an unknown distribution strategy (horovod)",
    ),
    "learning-rate-scaling": Case(
        TRAIN,
        ("train.learning_rate_scaling=sqrt",),
        ("train.learning_rate_scaling = 'sqrt'", "'linear'"),
        "an unknown learning-rate scaling (sqrt)",
    ),
    "layer-type": Case(
        TRAIN,
        ("model.layers.1.type=pool",),
        ("model.layers.1.type = 'pool'", "max_pool, avg_pool"),
        "an unknown layer type in place of a pooling layer (pool)",
    ),
    "layer-type-of-a-convolution": Case(
        TRAIN,
        ("model.layers.2.type=conv3d",),
        ("conv3d", "unknown layer type", "dense"),
        "an unknown layer type in place of a convolution (conv3d)",
    ),
    "layer-type-alone": Case(
        TRAIN,
        (layers("{type:squeeze_excite}"),),
        ("unknown layer type", "global_avg_pool", "residual"),
        "an unknown layer type with no other key (squeeze_excite)",
    ),
    "model-preset": Case(
        TRAIN,
        ("model=resnet",),
        ("model=resnet", "lenet5, seed_cnn, small_cnn"),
        "an unknown model preset (model=resnet)",
    ),
    # ---- architectures that shrink to nothing or miss a step ----
    "pooling-shrinks-to-zero": Case(
        TRAIN,
        ("model.layers.1.pool_size=29",),
        ("model.layers.1.pool_size = 29", "28x28 input to 0x0"),
        "pooling that shrinks the image to nothing",
    ),
    "many-poolings-shrink-to-zero": Case(
        TRAIN,
        (layers(*["{type:max_pool,pool_size:2}"] * 6, "{type:flatten}"),),
        ("model.layers.4.pool_size",),
        "six 2x2 poolings: the first that empties the image is named",
    ),
    "valid-convolution-shrinks-to-zero": Case(
        TRAIN,
        ("model=lenet5", "model.layers.2.kernel_size=15"),
        ("model.layers.2.kernel_size = 15", "to 0x0"),
        "a 'valid' convolution that shrinks the image to nothing",
    ),
    "separable-convolution-shrinks-to-zero": Case(
        TRAIN,
        (layers("{type:separable_conv,filters:8,kernel_size:29,padding:valid}"),),
        ("model.layers.0.kernel_size = 29", "28x28 input to 0x0"),
        "a 'valid' separable convolution larger than the image",
    ),
    "dense-on-an-image": Case(
        TRAIN,
        ("model.layers=[{type:dense,units:10,activation:softmax}]",),
        ("model.layers.0", "flatten"),
        "a dense layer on an image, with no flatten",
    ),
    "global-pool-after-flatten": Case(
        TRAIN,
        (layers("{type:flatten}", "{type:global_avg_pool}"),),
        ("model.layers.1.type = 'global_avg_pool': needs an image input",),
        "global pooling after flatten",
    ),
    # ---- data, the command line, the file, the machine ----
    "validation-size-zero": Case(
        ("prepare",),
        ("data.validation_size=0",),
        ("data.validation_size = 0", "greater than 0"),
        "a validation split of 0 images",
    ),
    # The copy's synthetic raw data has 120 training images: the split is checked against them.
    "split-larger-than-data": Case(
        ("prepare",),
        ("data.validation_size=500",),
        ("data.validation_size = 500", "smaller than the 120 training images"),
        "a validation split larger than the training images",
        opens_run=True,
    ),
    "split-equal-to-data": Case(
        ("prepare",),
        ("data.validation_size=120",),
        ("data.validation_size = 120", "smaller than the 120 training images"),
        "a validation split as large as the training images",
        opens_run=True,
    ),
    "no-sources": Case(
        ("download",),
        ("data.sources=[]",),
        ("data.sources = []", "at least 1 item"),
        "no download sources (data.sources=[])",
    ),
    "override-syntax": Case(
        TRAIN,
        ("train.epochs=[1",),
        ("override 'train.epochs=[1'",),
        "an override that does not parse (train.epochs=[1)",
    ),
    "unparseable-params-yaml": Case(
        TRAIN,
        (),
        (f"params.yaml:{BATCH_SIZE_LINE}: not valid YAML (mapping values are not allowed here)",),
        "params.yaml that is not valid YAML",
        replace_in_params("  batch_size: 32\n", "  batch_size: 32: 5\n"),
    ),
    "unclosed-list-in-params-yaml": Case(
        ("download",),
        (),
        ("params.yaml", "not valid YAML"),
        "params.yaml with an unclosed list, read by download",
        replace_in_params("\nseed: 42\n", "\nseed: [42\n"),
    ),
    "gpu-without-one": Case(
        TRAIN,
        ("train.device=gpu",),
        ("train.device = 'gpu'", "sees no GPU", "allowed: auto, cpu, gpu"),
        "train.device=gpu on a machine without a GPU",
    ),
}


# ---- bad data, each through the stage where it enters, naming the file ----


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


# The same cases at function level are in test_prepare.py and test_download.py.
BAD_DATA = {
    "prepared-nan": Case(
        TRAIN,
        (),
        ("data/prepared/train.npz", "NaN"),
        "a NaN in the prepared training images",
        # train reads its data before it opens its MLflow run: no run, no store.
        edit_split("train", put_nan),
    ),
    "raw-label-outside-0-9": Case(
        ("prepare",),
        ("data.validation_size=20",),
        ("t10k-labels-idx1-ubyte.gz", "label 10 at index 0 is outside 0..9"),
        "a raw test label outside 0..9",
        edit_raw("t10k-labels-idx1-ubyte", lambda content: content[:8] + b"\x0a" + content[9:]),
        opens_run=True,
    ),
    "download-checksum-mismatch": Case(
        ("download",),
        ("data.sources=[{project}/mirror]",),
        ("mirror/train-images-idx3-ubyte.gz: checksum mismatch",),
        "a mirror file of the right size with other content",
        corrupt_mirror,
        opens_run=True,
    ),
}

CASES = {**BAD_PARAMS, **BAD_DATA}
# Every run: "<case>" in its first stage, "<case>:<stage>" in the others, "<case>:python-m" as a process.
RUNS = {
    **{name if index == 0 else f"{name}:{stage}": (name, stage)
       for name, case in CASES.items() for index, stage in enumerate(case.stages)},
    **{f"{name}:python-m": (name, case.stages[0]) for name, case in CASES.items() if case.python_m},
}  # fmt: skip


# ---- running them ----


@dataclass
class CaseRun:
    """One run of a case: its project copy, its MLflow store, the files before, and what the stage did."""

    project: Path
    store: Path
    before: dict[str, tuple[int, str]]
    result: StageResult | None = None


def make_template(project: Path) -> Path:
    """A project copy whose outputs exist: synthetic raw and prepared data, a model, reports."""
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


def copy_case(base: Path, run_name: str, template: Path, store: Path) -> CaseRun:
    """A fresh copy of the template for one run, set up and snapshotted."""
    project = base / run_name.replace(":", "-") / "project"
    shutil.copytree(template, project, symlinks=True)
    case = CASES[RUNS[run_name][0]]
    if case.setup:
        case.setup(project)
    return CaseRun(project, store, snapshot(project, OUTPUT_DIRS))


def stage_call(run_name: str, run: CaseRun) -> StageCall:
    """The run's stage, overrides, folder and environment (its own MLflow store)."""
    name, stage = RUNS[run_name]
    overrides = tuple(item.replace("{project}", str(run.project)) for item in CASES[name].overrides)
    environment = stage_environment(
        FASHION_CNN_ROOT=str(run.project), MLFLOW_TRACKING_URI=f"sqlite:///{run.store}"
    )
    return StageCall(stage, overrides, run.project, environment)


@pytest.fixture(scope="module")
def case_runs(tmp_path_factory: pytest.TempPathFactory, project_copier) -> tuple[dict[str, CaseRun], int]:
    """Every run once, in one interpreter but the python-m ones; and the GPUs that interpreter saw."""
    base = tmp_path_factory.mktemp("bad-input")
    template = make_template(project_copier(base / "template"))
    # Bad params must not even create a store, so each run has its own; the data cases share one.
    shared_store = base / "data-cases-mlflow.db"
    runs = {
        run_name: copy_case(
            base, run_name, template, shared_store if CASES[name].opens_run else base / f"{run_name}.db"
        )
        for run_name, (name, _) in RUNS.items()
    }
    calls = {run_name: stage_call(run_name, run) for run_name, run in runs.items()}
    separate = [run_name for run_name in runs if run_name.endswith(":python-m")]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1 + len(separate)) as pool:
        batch = pool.submit(
            run_stages_in_one_process,
            {name: call for name, call in calls.items() if name not in separate},
            base,
        )
        processes = {
            run_name: pool.submit(run_stage, calls[run_name].stage, *calls[run_name].overrides,
                                  cwd=calls[run_name].cwd, env=calls[run_name].env)
            for run_name in separate
        }  # fmt: skip
        results, gpus = batch.result()
        results |= {run_name: future.result() for run_name, future in processes.items()}
    for run_name, run in runs.items():
        run.result = results[run_name]
    return runs, gpus


def skip_where_valid(run_name: str, gpus: int) -> None:
    if RUNS[run_name][0] == "gpu-without-one" and gpus:
        pytest.skip("this machine has a GPU, so train.device=gpu is valid here")


def marked(run_names: list[str], sees: Callable[[Case], str]) -> list:
    """The runs as table rows, each with its reliability marker (docs/reliability.md)."""
    rows = []
    for run_name in run_names:
        name, stage = RUNS[run_name]
        where = f"{stage} (as its own python -m process)" if run_name.endswith(":python-m") else stage
        case = CASES[name]
        marker = pytest.mark.reliability(case=f"{where}: {case.what}", sees=sees(case))
        rows.append(pytest.param(run_name, marks=marker, id=run_name))
    return rows


def error_line_sees(case: Case) -> str:
    """'one `error:` line with: <first fragment>; exit 1', the fragment shortened to fit a table cell."""
    fragment = case.fragments[0]
    if len(fragment) > 60:
        fragment = fragment[:57].rsplit(" ", 1)[0] + " ..."
    return f"one `error:` line with: {fragment}; exit 1"


@pytest.mark.parametrize("run_name", marked(list(RUNS), error_line_sees))
def test_bad_input_stops_the_stage_with_one_error_line(run_name: str, case_runs) -> None:
    runs, gpus = case_runs
    skip_where_valid(run_name, gpus)
    result, case = runs[run_name].result, CASES[RUNS[run_name][0]]
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = our_lines(result.stderr)
    assert line.startswith("error: "), line
    for fragment in case.fragments:
        assert fragment in line, (fragment, line)
    # A person can read it: not a config dump or a traceback squeezed into one line.
    assert len(line) < 600, line


@pytest.mark.parametrize(
    "run_name",
    marked(
        [run_name for run_name, (name, _) in RUNS.items() if not CASES[name].opens_run],
        lambda case: "no file under data/ or reports/ changes; no MLflow store is created",
    ),
)
def test_bad_params_touch_no_output_and_start_no_mlflow_run(run_name: str, case_runs) -> None:
    runs, gpus = case_runs
    skip_where_valid(run_name, gpus)
    run = runs[run_name]
    assert snapshot(run.project, OUTPUT_DIRS) == run.before
    # Validation comes before the stage opens its MLflow run: no store was even created.
    assert not run.store.exists()


@pytest.mark.reliability(
    case="bad data or a bad split found after a stage opened its MLflow run",
    sees="the run ends FAILED; none is left RUNNING; no file under data/ or reports/ changes",
)
def test_bad_data_ends_every_mlflow_run_failed_none_left_running(case_runs) -> None:
    runs, _ = case_runs
    opened = [run_name for run_name, (name, _) in RUNS.items() if CASES[name].opens_run]
    assert run_statuses(runs[opened[0]].store) == ["FAILED"] * len(opened)
    for run_name in opened:
        assert snapshot(runs[run_name].project, OUTPUT_DIRS) == runs[run_name].before, run_name


def test_the_snapshot_sees_a_file_rewritten_with_the_same_bytes(tmp_path: Path) -> None:
    """The comparison above can fail: rewriting a file with the same bytes changes its mtime."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x").write_text("same\n")
    before = snapshot(tmp_path, OUTPUT_DIRS)
    os.utime(tmp_path / "data" / "x", ns=(1, 1))
    assert snapshot(tmp_path, OUTPUT_DIRS) != before
