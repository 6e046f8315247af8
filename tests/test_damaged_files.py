"""Damaged input files (issue #18): every file a stage or tool reads, emptied, cut to half, with bytes
flipped in the middle, of the wrong dtype or shape, or from another run, stops its reader with one
`error:` line naming the file, what is wrong and what rebuilds it; exit 1, no other file touched.

The table is generated: rows are the input files (INPUT_FILES: who reads them, what rebuilds them,
their file-specific damage), columns the kinds of damage (DAMAGE_KINDS); a new input file gets every
case by adding one row. A pair that does not apply is a `NotApplicable` in the row, saying why.

Every case runs in its own copy of one template project (tests/damaged_template.py): synthetic raw and
prepared data, a small_cnn model with its config.yaml, MLflow run and model outputs, history.csv, the
checkpoint of a training run interrupted after epoch 1 and a garment photo. The stages run as
`main()`, the function `python -m fashion_cnn.stages.<stage>` calls, all in one interpreter
(stage_runner.run_stages_in_one_process: TensorFlow is imported once); predict's main() runs in this
process.

Bit flips are 8 bytes inverted in the middle of the file. The zip archives (.npz, .keras) are checked
against the CRC-32 stored for each member; Keras's HDF5 checkpoint against a SHA-256 its state file
records; the text files by what flipped bytes leave (not UTF-8, not JSON, not a number).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from damaged_template import Template, make_template
from stage_runner import (
    StageCall,
    our_lines,
    run_stages_in_one_process,
    run_statuses,
    snapshot,
    stage_environment,
)

from fashion_cnn.data import idx
from fashion_cnn.training import checkpoint
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths

# ---- the kinds of damage (columns) ----

Edit = Callable[[Path, "Template"], None]


def emptied(path: Path, template: Template) -> None:
    path.write_bytes(b"")


def cut_to_half(path: Path, template: Template) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def flipped(path: Path, template: Template) -> None:
    """Invert 8 bytes in the middle of the file (every bit of them), as a failing disk or copy might."""
    content = bytearray(path.read_bytes())
    middle = len(content) // 2
    for offset in range(middle, middle + 8):
        content[offset] ^= 0xFF
    path.write_bytes(bytes(content))


@dataclass(frozen=True)
class Damage:
    """One damaged version of a file: how to make it, the words the line must hold, in plain words."""

    edit: Edit
    says: str  # a regular expression (case-insensitive) for what the line says is wrong
    case: str  # for the reliability marker: "truncated to half"
    shown: str  # for the reliability marker: what the line says, e.g. "'truncated'"


@dataclass(frozen=True)
class NotApplicable:
    """A kind of damage that does not apply to a file; `why` says why."""

    why: str


# The kinds every file can suffer, the same way for all.
EMPTY = Damage(emptied, r"\bempty\b", "empty (0 bytes)", "'empty file'")
TRUNCATED = Damage(cut_to_half, r"truncated|incomplete", "truncated to half", "'truncated'/'incomplete'")
FLIPPED = Damage(flipped, r"corrupt", "8 bytes flipped in the middle", "'corrupt'")
DAMAGE_KINDS = ("empty", "truncated", "flipped", "wrong_dtype", "wrong_shape", "another_run")


# ---- the input files (rows) ----


@dataclass(frozen=True)
class InputFile:
    """One row: a file, the stage or tool that reads it, and what the line must say to do."""

    name: str  # the row's id
    path: str  # relative to the project root
    reader: str  # a stage module run by the batch (prepare, train, evaluate, ...) or "predict"
    rebuild: str | None  # what the line must name to make it again; None: nothing does (a user's photo)
    wrong_dtype: Damage | NotApplicable
    wrong_shape: Damage | NotApplicable
    another_run: Damage | NotApplicable
    # Where the reader words a generic kind otherwise (a library's own message): kind -> (says, shown).
    says: dict[str, tuple[str, str]] = field(default_factory=dict)
    # The fix as the reliability marker shows it, where `rebuild` is not a command.
    fix: str | None = None

    def damage(self, kind: str) -> Damage | NotApplicable:
        generic = {"empty": EMPTY, "truncated": TRUNCATED, "flipped": FLIPPED}
        found = generic[kind] if kind in generic else getattr(self, kind)
        if isinstance(found, Damage) and kind in self.says:
            says, shown = self.says[kind]
            return Damage(found.edit, says, found.case, shown)
        return found


def rewrite_gzip(change: Callable[[bytes], bytes]) -> Edit:
    """An edit of a raw .gz file's IDX content, gzipped again."""

    def edit(path: Path, template: Template) -> None:
        path.write_bytes(gzip.compress(change(gzip.decompress(path.read_bytes())), mtime=0))

    return edit


def idx_array(change: Callable[[np.ndarray], np.ndarray]) -> Edit:
    """An edit of the array in a raw IDX file, encoded again with its own header."""
    return rewrite_gzip(lambda content: idx.encode_idx(change(idx.parse_idx(content, "raw"))))


# The IDX type byte (third byte of the magic number) 0x0D is float32, not Fashion-MNIST's unsigned bytes.
RAW_DTYPE = Damage(
    rewrite_gzip(lambda content: content[:2] + b"\x0d" + content[3:]),
    r"magic number",
    "IDX type float32, not uint8",
    "'wrong IDX magic number'",
)
RAW_OTHER_DOWNLOAD = Damage(
    idx_array(lambda array: array[:-1]),
    r"different downloads",
    "one entry fewer than its pair",
    "both files' counts",
)


def raw_row(name: str, wrong_shape: Damage) -> InputFile:
    return InputFile(
        name,
        f"data/raw/{name}",
        "prepare",
        "dvc repro download",
        RAW_DTYPE,
        wrong_shape,
        RAW_OTHER_DOWNLOAD,
        # gzip's own check finds flipped bytes (a CRC-32 or a broken deflate stream).
        says={"flipped": (r"not a valid gzip file", "'not a valid gzip file'")},
    )


RAW_IMAGES_SHAPE = Damage(
    idx_array(lambda images: images[:, :, :27]),
    r"shape",
    "images 28x27, not 28x28",
    "'expected images of shape'",
)
RAW_LABELS_SHAPE = Damage(
    idx_array(lambda labels: labels.reshape(-1, 1)),
    r"magic number",
    "labels 2-D (count, 1)",
    "'magic number'",
)


def edit_npz(change: Callable[[dict[str, np.ndarray]], None]) -> Edit:
    """An edit of the arrays in an .npz, saved again as prepare saves it."""

    def edit(path: Path, template: Template) -> None:
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        change(arrays)
        with open(path, "wb") as file:
            np.savez(file, **arrays)

    return edit


def retype(key: str, dtype: type) -> Callable[[dict[str, np.ndarray]], None]:
    def change(arrays: dict[str, np.ndarray]) -> None:
        arrays[key] = arrays[key].astype(dtype)

    return change


def reshape_last_axis_away(key: str) -> Callable[[dict[str, np.ndarray]], None]:
    def change(arrays: dict[str, np.ndarray]) -> None:
        arrays[key] = arrays[key][..., 0]

    return change


# A split of another prepare run is a valid split: nothing in an .npz names the run (dvc.lock's hashes
# do: `dvc status`), so "another run" does not apply to the prepared arrays.
OTHER_PREPARE_RUN = NotApplicable("an .npz of another prepare run is valid data; only dvc.lock tells")


def split_row(name: str, reader: str) -> InputFile:
    return InputFile(
        name,
        f"data/prepared/{name}",
        reader,
        "dvc repro prepare",
        Damage(edit_npz(retype("images", np.float64)), r"float32", "images float64", "'must be float32'"),
        Damage(
            edit_npz(reshape_last_axis_away("images")), r"shape", "images without the channel axis", "'shape'"
        ),
        OTHER_PREPARE_RUN,
    )


def replace_text(old: str, new: str) -> Edit:
    def edit(path: Path, template: Template) -> None:
        text = path.read_text()
        assert old in text, (path, old)
        path.write_text(text.replace(old, new, 1))

    return edit


def write_text(text: str) -> Edit:
    def edit(path: Path, template: Template) -> None:
        path.write_text(text)

    return edit


def copy_from_another_run(name: str) -> Edit:
    """Replace the file by its counterpart of another run, made by the template (OTHER_RUN_FILES)."""

    def edit(path: Path, template: Template) -> None:
        shutil.copyfile(template.other_run / name, path)

    return edit


def edit_json(change: Callable[[dict], object]) -> Edit:
    def edit(path: Path, template: Template) -> None:
        record = json.loads(path.read_text())
        path.write_text(json.dumps(change(record)))

    return edit


def state_of_another_run(state: dict) -> dict:
    """A resume state written with other weights (another run's digest and history)."""
    state["weights_sha256"] = hashlib.sha256(b"the weights of another run").hexdigest()
    state["rows"] = [{**row, "loss": row["loss"] * 2} for row in state["rows"]]
    return state


CHECKPOINT = "checkpoints/train"


def checkpoint_row(
    name: str,
    wrong_dtype: Damage | NotApplicable,
    wrong_shape: Damage | NotApplicable,
    another_run: Damage | NotApplicable,
) -> InputFile:
    """A file of the checkpoint train resumes from; not a DVC output, so deleting it is the way out
    (the line says `delete <project>/checkpoints/train to train from the first epoch`)."""
    return InputFile(
        name,
        f"{CHECKPOINT}/{name}",
        "train",
        f"/{CHECKPOINT} to train from the first epoch",
        wrong_dtype,
        wrong_shape,
        another_run,
        fix=f"delete {CHECKPOINT}",
    )


MODEL_REBUILD = "dvc checkout data/model"

INPUT_FILES = (
    # ---- data/raw, read by prepare ----
    raw_row("train-images-idx3-ubyte.gz", RAW_IMAGES_SHAPE),
    raw_row("train-labels-idx1-ubyte.gz", RAW_LABELS_SHAPE),
    raw_row("t10k-images-idx3-ubyte.gz", RAW_IMAGES_SHAPE),
    raw_row("t10k-labels-idx1-ubyte.gz", RAW_LABELS_SHAPE),
    # ---- data/prepared, read by train, evaluate and model_figures ----
    split_row("train.npz", "train"),
    split_row("validation.npz", "train"),
    # evaluate reads the test split's pixels only (tests/test_prepare.py refuses bad ones); model_figures
    # reads its standardized images, where a flip in the middle of the file lands.
    split_row("test.npz", "model_figures"),
    # Train puts the statistics into the model it saves; nothing else reads them.
    InputFile(
        "standardization.npz",
        "data/prepared/standardization.npz",
        "train",
        "dvc repro prepare",
        Damage(edit_npz(retype("mean", np.float64)), r"float32", "mean float64", "'must be float32'"),
        Damage(edit_npz(reshape_last_axis_away("std")), r"shape", "std (1, 28), not (1, 28, 28)", "'shape'"),
        OTHER_PREPARE_RUN,
    ),
    # ---- data/model, read by evaluate (and model_figures) and predict ----
    *(
        InputFile(
            name,
            "data/model/model.keras",
            reader,
            MODEL_REBUILD,
            NotApplicable("a model's dtype is its training's mixed-precision setting, not damage"),
            Damage(
                copy_from_another_run("wrong_shape.keras"),
                r"not a Fashion-MNIST model",
                "a model of (32, 32, 3) inputs and 5 outputs",
                "its shapes and Fashion-MNIST's",
            ),
            Damage(
                copy_from_another_run("model.keras"),
                r"different runs",
                "lenet5's model beside small_cnn's config.yaml",
                "'of different runs'",
            ),
        )
        for name, reader in (("model.keras", "evaluate"), ("model.keras-predict", "predict"))
    ),
    InputFile(
        "config.yaml",
        "data/model/config.yaml",
        "evaluate",
        MODEL_REBUILD,
        Damage(replace_text("epochs: 2", "epochs: two"), r"valid integer", "epochs: two", "'valid integer'"),
        Damage(write_text("- small_cnn\n- 2\n"), r"mapping", "a YAML list", "'expected the mapping'"),
        Damage(
            copy_from_another_run("config.yaml"),
            r"different runs",
            "lenet5's config beside small_cnn's model and run",
            "'of different runs'",
        ),
    ),
    InputFile(
        "mlflow_run.json",
        "data/model/mlflow_run.json",
        "evaluate",
        MODEL_REBUILD,
        Damage(
            edit_json(lambda record: {**record, "run_id": 12345}),
            r"must be str",
            "run_id a number",
            "'must be str'",
        ),
        Damage(
            edit_json(lambda record: list(record.values())),
            r"JSON object",
            "a JSON list",
            "'expected a JSON object'",
        ),
        Damage(
            copy_from_another_run("mlflow_run.json"),
            r"different runs",
            "the MLflow run of a lenet5 model",
            "'of different runs'",
        ),
    ),
    # ---- reports/train/metrics.json, read by evaluate (validation numbers, training time) ----
    InputFile(
        "train-metrics.json",
        "reports/train/metrics.json",
        "evaluate",
        "dvc repro train",
        Damage(
            edit_json(lambda record: {**record, "val_accuracy": "high"}),
            r"must be float",
            "val_accuracy a string",
            "'must be float'",
        ),
        Damage(
            edit_json(lambda record: list(record.values())),
            r"JSON object",
            "a JSON list",
            "'expected a JSON object'",
        ),
        NotApplicable("the metrics of another run are valid metrics: nothing in them names their run"),
    ),
    # ---- data/evaluate/model_outputs.npz: what evaluate computed with the model, read by model_figures ----
    InputFile(
        "model_outputs.npz",
        "data/evaluate/model_outputs.npz",
        "model_figures",
        "dvc repro evaluate",
        Damage(
            edit_npz(retype("probabilities", np.float64)),
            r"float32",
            "probabilities float64",
            "'must be float32'",
        ),
        Damage(
            edit_npz(reshape_last_axis_away("feature_maps_0")),
            r"shape",
            "a layer's feature maps 3-D",
            "'of shape'",
        ),
        Damage(
            copy_from_another_run("model_outputs.npz"),
            r"different runs",
            "a lenet5 model's outputs",
            "'of different runs'",
        ),
    ),
    # ---- reports/train/history.csv, read by model_figures ----
    InputFile(
        "history.csv",
        "reports/train/history.csv",
        "model_figures",
        "dvc repro train",
        Damage(replace_text("0.500000", "half"), r"not a number", "an accuracy 'half'", "'not a number'"),
        Damage(
            replace_text(",val_accuracy", ",val_acc"),
            r"missing columns",
            "the val_accuracy column renamed",
            "'missing columns'",
        ),
        NotApplicable("a history of another run is a valid history: nothing in it names its run"),
    ),
    # ---- the checkpoint of an interrupted training, read by train ----
    checkpoint_row(
        "fingerprint.txt",
        NotApplicable("a line of text has no dtype"),
        NotApplicable("a line of text has no shape"),
        # By design: a checkpoint of other params or data is discarded and training starts over
        # (test_faults.test_a_checkpoint_of_other_params_is_discarded_not_resumed).
        NotApplicable("a fingerprint of other params makes train discard the checkpoint, by design"),
    ),
    checkpoint_row(
        "training_metadata.json",
        Damage(write_text('{"epoch": "1", "batch": 0}'), r"must be int", "epoch a string", "'must be int'"),
        Damage(write_text("[1, 0]"), r"JSON object", "a JSON list", "'expected a JSON object'"),
        Damage(
            write_text('{"epoch": 3, "batch": 0}'),
            r"different runs",
            "says 3 epochs, of another run than its state",
            "'of different runs'",
        ),
    ),
    checkpoint_row(
        "resume_state_0001.json",
        Damage(
            edit_json(lambda state: {**state, "random_states": dict.fromkeys(state["random_states"], "x")}),
            r"not numbers",
            "random states as text",
            "'is not numbers'",
        ),
        Damage(
            edit_json(lambda state: {**state, "rows": {}}),
            r"must be list",
            "rows an object",
            "'must be list'",
        ),
        Damage(
            edit_json(state_of_another_run), r"another run", "the state of another run", "'of another run'"
        ),
    ),
    checkpoint_row(
        "latest.weights.h5",
        NotApplicable("HDF5 of another dtype is caught as any other content, by the recorded SHA-256"),
        NotApplicable("HDF5 of another shape is caught as any other content, by the recorded SHA-256"),
        Damage(
            copy_from_another_run("latest.weights.h5"),
            r"another run",
            "the weights of another run",
            "'of another run'",
        ),
    ),
    # ---- what predict reads besides the model and statistics: the user's photo ----
    InputFile(
        "garment.png",
        "garment.png",
        "predict",
        None,
        NotApplicable("predict turns any pixel type Pillow reads (8/16-bit, colour, alpha) into grey"),
        NotApplicable("predict scales an image of any size to 28x28"),
        NotApplicable("a photo has no run"),
        says={
            "empty": (r"not an image", "'not an image file'"),
            "flipped": (r"cannot read image", "'cannot read image'"),
        },
    ),
    # ---- params.yaml itself, read by every stage (here prepare) before Hydra composes it ----
    InputFile(
        "params.yaml",
        "params.yaml",
        "prepare",
        "git checkout params.yaml",
        NotApplicable("a value of the wrong type is test_reliability's and test_config's bad-params table"),
        Damage(write_text("- seed\n- data\n"), r"mapping", "a YAML list", "'expected a mapping'"),
        NotApplicable("params.yaml decides the run; there is no other run's to take"),
    ),
)


def table() -> list:
    """Every (file, damage) pair that applies, as pytest params with their own reliability marker."""
    params = []
    for row in INPUT_FILES:
        for kind in DAMAGE_KINDS:
            damage = row.damage(kind)
            if isinstance(damage, NotApplicable):
                continue
            does = f", `{row.fix or row.rebuild}`" if row.rebuild else ""
            marker = pytest.mark.reliability(
                case=f"{row.path} {damage.case} ({row.reader})",
                sees=f"one line: {Path(row.path).name}, {damage.shown}{does}; exit 1",
            )
            params.append(pytest.param(f"{row.name}:{kind}", marks=marker, id=f"{row.name}:{kind}"))
    return params


TABLE = table()
ROWS = {row.name: row for row in INPUT_FILES}
CASES = [param.values[0] for param in TABLE]


def damage_of(case: str) -> tuple[InputFile, Damage]:
    row_name, kind = case.split(":")
    damage = ROWS[row_name].damage(kind)
    assert isinstance(damage, Damage)
    return ROWS[row_name], damage


# ---- running the cases ----

# Hydra's own run folders (outputs/) and train's lock file are written by every run, by design.
NOT_INPUTS_OR_OUTPUTS = ("outputs/", "data/train.lock")


@dataclass
class CaseRun:
    """One case: its project copy, the files before, the reader's exit code and stderr."""

    project: Path
    before: dict[str, tuple[int, str]]
    code: int = -1
    stderr: str = ""


# One intact run per reader, so that each error above is the damage's, not the template's; train's
# intact run is test_an_interrupted_training_resumes_from_the_template_checkpoint.
INTACT = {"intact:prepare": "prepare", "intact:evaluate": "evaluate", "intact:predict": "predict"}


def reader_of(name: str) -> str:
    return INTACT[name] if name in INTACT else damage_of(name)[0].reader


def copy_case(base: Path, name: str, template: Template) -> CaseRun:
    """A fresh copy of the template, its file damaged (unless intact), snapshotted.

    The folder is named by a digest of the case, not its words: the line names the folder, and a
    folder called "...-truncated" would say "truncated" for the reader.
    """
    project = base / f"case-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    shutil.copytree(template.project, project, symlinks=True)
    if name not in INTACT:
        row, damage = damage_of(name)
        damage.edit(project / row.path, template)
    return CaseRun(project, snapshot(project, skip=NOT_INPUTS_OR_OUTPUTS))


def run_predict(run: CaseRun, template: Template) -> None:
    """`python -m fashion_cnn.tools.predict garment.png` in the case's copy, in this process."""
    from fashion_cnn.tools import predict

    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.chdir(run.project)
        patch.setenv("FASHION_CNN_ROOT", str(run.project))
        patch.setenv("MLFLOW_TRACKING_URI", template.tracking_uri)
        with contextlib.redirect_stdout(io.StringIO()):
            run.code = predict.main(["garment.png"])
    run.stderr = stderr.getvalue()


def run_batch(runs: dict[str, CaseRun], template: Template, directory: Path) -> None:
    """Every stage case through its stage's `main`, all in one interpreter."""
    environment = stage_environment(MLFLOW_TRACKING_URI=template.tracking_uri)
    calls = {
        name: StageCall(
            reader_of(name), (), run.project, environment | {"FASHION_CNN_ROOT": str(run.project)}
        )
        for name, run in runs.items()
    }
    results, _ = run_stages_in_one_process(calls, directory)
    for name, run in runs.items():
        run.code, run.stderr = results[name].returncode, results[name].stderr


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """The template project, its MLflow store and another run's files."""
    base = tmp_path_factory.mktemp("damaged")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
        return make_template(base)


@pytest.fixture(scope="module")
def case_runs(template: Template) -> dict[str, CaseRun]:
    """Every case of the table and every intact run, once."""
    base = template.store.parent
    runs = {name: copy_case(base / "cases", name, template) for name in [*CASES, *INTACT]}
    for name, run in runs.items():
        if reader_of(name) == "predict":
            run_predict(run, template)
    run_batch({name: run for name, run in runs.items() if reader_of(name) != "predict"}, template, base)
    return runs


def error_lines(run: CaseRun) -> list[str]:
    """stderr without the notices of TensorFlow and MLflow that are not errors."""
    return our_lines(run.stderr)


# ---- the table ----


@pytest.mark.parametrize("case", TABLE)
def test_a_damaged_file_stops_its_reader_with_one_line_and_touches_nothing(
    case: str, case_runs: dict[str, CaseRun]
) -> None:
    row, damage = damage_of(case)
    run = case_runs[case]
    assert run.code == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    lines = error_lines(run)
    assert len(lines) == 1, run.stderr[-3000:]
    line = lines[0]
    assert line.startswith("error: "), line
    assert Path(row.path).name in line, line
    assert re.search(damage.says, line, re.IGNORECASE), (damage.says, line)
    if row.rebuild:
        assert row.rebuild in line, line
    assert len(line) < 600, line
    after = snapshot(run.project, skip=NOT_INPUTS_OR_OUTPUTS)
    changed = {name for name in run.before.keys() | after.keys() if run.before.get(name) != after.get(name)}
    assert changed == set(), changed


@pytest.mark.parametrize("name", list(INTACT))
def test_the_intact_template_passes_every_reader(name: str, case_runs: dict[str, CaseRun]) -> None:
    run = case_runs[name]
    assert run.code == 0, run.stderr[-3000:]
    assert error_lines(run) == [], run.stderr[-3000:]


def test_no_mlflow_run_is_left_running(template: Template, case_runs: dict[str, CaseRun]) -> None:
    """Every stage that opened (or reopened) an MLflow run before it found the damage ended it."""
    statuses = run_statuses(template.store)
    assert "FAILED" in statuses and "RUNNING" not in statuses, statuses


def test_a_failed_training_leaves_the_run_record_alone(case_runs: dict[str, CaseRun]) -> None:
    run = case_runs["validation.npz:wrong_dtype"]
    assert run.code == 1
    assert (
        snapshot(run.project, skip=NOT_INPUTS_OR_OUTPUTS)["data/model/mlflow_run.json"]
        == run.before["data/model/mlflow_run.json"]
    )


def test_every_row_has_every_kind_of_damage_or_says_why_not() -> None:
    for row in INPUT_FILES:
        for kind in DAMAGE_KINDS:
            damage = row.damage(kind)
            assert isinstance(damage, Damage) or (isinstance(damage, NotApplicable) and damage.why), (
                row,
                kind,
            )
    assert len({param.id for param in TABLE}) == len(TABLE)
    # docs/reliability.md lists each case in a table row of its own.
    markers = [param.marks[0].kwargs for param in TABLE]
    assert all(len(marker["case"]) < 100 and len(marker["sees"]) < 100 for marker in markers)
    assert len({marker["case"] for marker in markers}) == len(markers)


# ---- the checkpoint, intact: no batch hook (issue #17), and it resumes ----


def test_the_checkpoint_callback_has_no_batch_hook(tmp_path: Path) -> None:
    """Keras 3 tells a callback's batch hooks from the base class's no-ops by their `_is_default` mark
    (CallbackList._configure_async_dispatch); saving per epoch, ours needs none (issue #17)."""
    import keras
    from keras.src.utils.python_utils import is_default

    resumable = checkpoint.ResumableTraining(tmp_path, "0" * 64, report=None)
    hooks = ("on_batch_end", "on_train_batch_begin", "on_train_batch_end")
    assert all(is_default(getattr(resumable, hook)) for hook in hooks)
    # Keras's BackupAndRestore, which it builds on, has one: the check above can fail.
    assert not is_default(keras.callbacks.BackupAndRestore(str(tmp_path)).on_train_batch_end)


def test_an_interrupted_training_resumes_from_the_template_checkpoint(
    template: Template, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint every damaged-checkpoint case starts from, intact: train resumes it after epoch 1
    and ends with the metrics of a run that was never interrupted."""
    import mlflow

    from fashion_cnn.data import splits as data
    from fashion_cnn.training import loop, runtime

    run_config = ProjectConfig.from_params(yaml.safe_load((template.project / "params.yaml").read_text()))
    project_paths = paths.ProjectPaths(template.project)
    splits = [data.load_split(project_paths.prepared_dir, name) for name in ("train", "validation")]
    settings = runtime.resolve_runtime(run_config.train, "CPU", None)
    checkpoint_dir = tmp_path / "checkpoint"
    shutil.copytree(project_paths.train_checkpoint_dir, checkpoint_dir)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    histories = []
    for directory in (checkpoint_dir, None):  # resumed, then uninterrupted
        runtime.seed_everything(run_config.seed, run_config.train.deterministic)
        with mlflow.start_run():
            _, rows = loop.fit(run_config, *splits, settings, None, checkpoint_dir=directory)
        # Times differ from run to run; every other number must not.
        histories.append([{key: row[key] for key in row if key != "epoch_seconds"} for row in rows])
    printed = capsys.readouterr().out
    assert printed.count(f"resuming after epoch 1 from the checkpoint in {checkpoint_dir}") == 1, printed
    assert [row["epoch"] for row in histories[0]] == [1, 2]
    assert histories[0] == histories[1]


def test_a_checkpoint_of_other_params_is_no_damage(template: Template, tmp_path: Path) -> None:
    """The "another run" that does not apply to fingerprint.txt: a valid fingerprint of other params
    or data is no damage; completed_epochs says 0 and ResumableTraining discards the folder."""
    checkpoint_dir = tmp_path / "checkpoint"
    shutil.copytree(paths.ProjectPaths(template.project).train_checkpoint_dir, checkpoint_dir)
    saved = (checkpoint_dir / checkpoint.FINGERPRINT_FILE).read_text()
    assert checkpoint.completed_epochs(checkpoint_dir, saved) == 1
    assert checkpoint.completed_epochs(checkpoint_dir, "0" * 64) == 0
