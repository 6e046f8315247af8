"""What the train stage left in data/model/, read back by the stages and tools that use the model.

evaluate, model_figures, predict and serve follow the model they read, not the config they were
started with: its MLflow run and experiment come from mlflow_run.json, its settings from config.yaml.
"""

from __future__ import annotations

import contextlib
import logging
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_cnn.config.schema import flatten
from fashion_cnn.data.idx import IMAGE_SIDE, NUM_CLASSES
from fashion_cnn.errors import ConfigError, DataError
from fashion_cnn.model import artifact
from fashion_cnn.model.architecture import count_parameters
from fashion_cnn.model.standardization import takes_raw_pixels
from fashion_cnn.tracking import query, record, runs
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths, records
from fashion_cnn.utils.atomic import write_json_atomic

log = logging.getLogger(__name__)

REBUILD_HINT = "restore it with `dvc checkout data/model` or rebuild it with `dvc repro train`"
# The config keys that decide what a trained model is; data.* and tracking.* may differ freely.
DECISIVE_SECTIONS = ("seed", "model", "train")
# What every Fashion-MNIST model takes (one image, no batch axis) and gives (one score per class).
INPUT_SHAPE = (IMAGE_SIDE, IMAGE_SIDE, 1)
# MLflow's run ids: 32 lowercase hexadecimal digits.
RUN_ID = re.compile(r"[0-9a-f]{32}")


def load_model(path: Path) -> Any:  # -> keras.Model (keras is imported lazily: it is slow to import)
    """Load a trained model in Keras safe mode, after refusing a file that carries code
    (model/artifact.py): a .keras file cannot run code stored in it.

    The archive is checked first (every member against its CRC-32), the model after: it must take
    (28, 28, 1) grey levels 0..255 (its first layer the standardization, model/standardization.py),
    give 10 scores and, beside the train stage's config.yaml (data/model/), be the model that config
    describes.
    """
    import keras

    check_archive(path)
    artifact.check_artifact(path, REBUILD_HINT)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a loadable Keras model ({error}); {REBUILD_HINT}") from None
    inputs, outputs = tuple(model.input_shape[1:]), tuple(model.output_shape[1:])
    if inputs != INPUT_SHAPE or outputs != (NUM_CLASSES,):
        raise DataError(
            f"{path}: not a Fashion-MNIST model: it takes {inputs} and gives {outputs}, where one takes "
            f"{INPUT_SHAPE} and gives ({NUM_CLASSES},); {REBUILD_HINT}"
        )
    if not takes_raw_pixels(model):
        raise DataError(
            f"{path}: the model takes standardized images, not grey levels 0..255: its first layer is not "
            f"the 'standardization' Normalization layer the train stage puts in front (a model saved "
            f"before the model carried its standardization, or by other code); {REBUILD_HINT}"
        )
    config_file = path.parent / "config.yaml"
    try:
        trained = read_config(config_file)
    except DataError:
        # No readable config.yaml beside the model (a model file given on its own): nothing to compare.
        trained = None
    if trained is not None:
        expected = (trained.model.name, count_parameters(trained.model))
        if (model.name, model.count_params()) != expected:
            raise DataError(
                f"{path}: another model than {config_file} describes: {model.name!r} with "
                f"{model.count_params():,} parameters, not {expected[0]!r} with {expected[1]:,} "
                f"(the two files are of different runs); {REBUILD_HINT}"
            )
    return model


def check_archive(path: Path) -> None:
    """A DataError unless `path` is a complete zip archive whose members all pass their CRC-32 check."""
    records.check_file(path, REBUILD_HINT)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        problem = "truncated or not a .keras (zip) archive" if "zip file" in str(error) else "corrupt"
        raise DataError(f"{path}: not a loadable Keras model: {problem} ({error}); {REBUILD_HINT}") from None
    if damaged is not None:
        raise DataError(
            f"{path}: not a loadable Keras model: corrupt: {damaged} in it fails its CRC-32 check (its "
            f"bytes changed after it was saved); {REBUILD_HINT}"
        )


@dataclass(frozen=True)
class TrainingRun:
    """The MLflow run the train stage logged the model to (data/model/mlflow_run.json)."""

    run_id: str
    experiment_id: str
    tracking_uri: str


def read_training_run(project: paths.ProjectPaths) -> TrainingRun:
    """The recorded run, or a DataError naming the file and what is wrong with it."""
    path = project.run_info_file
    record = records.read_json_object(
        path, {"run_id": str, "experiment_id": str, "tracking_uri": str}, REBUILD_HINT
    )
    if not RUN_ID.fullmatch(record["run_id"]):
        raise DataError(
            f"{path}: run_id {record['run_id']!r:.60} is not an MLflow run id (32 hexadecimal digits); "
            f"{REBUILD_HINT}"
        )
    empty = [key for key in ("experiment_id", "tracking_uri") if not record[key].strip()]
    if empty:
        raise DataError(f"{path}: {' and '.join(empty)} empty; {REBUILD_HINT}")
    return TrainingRun(record["run_id"], record["experiment_id"], record["tracking_uri"])


def read_trained_config(project: paths.ProjectPaths) -> ProjectConfig:
    """The validated config the model was trained with (data/model/config.yaml)."""
    return read_config(project.model_dir / "config.yaml")


def read_config(path: Path) -> ProjectConfig:
    """The validated config in a config.yaml the train stage saved, or a DataError naming what is wrong."""
    text = records.read_text(path, REBUILD_HINT)
    if not text.endswith("\n"):
        # save_resolved ends the YAML with a newline: a file without one was cut short.
        raise DataError(f"{path}: truncated: its last line is incomplete; {REBUILD_HINT}")
    trained = records.parse_yaml(text, path, REBUILD_HINT)
    if not isinstance(trained, dict):
        raise DataError(
            f"{path}: expected the mapping save_resolved writes, got {records.kind(trained)}; {REBUILD_HINT}"
        )
    try:
        return ProjectConfig.from_params(trained)
    except ConfigError as error:
        reason = str(error).removeprefix("invalid params: ")
        problem = "incomplete" if reason.startswith("missing key") else "not the config of a trained model"
        raise DataError(f"{path}: {problem} ({reason}); {REBUILD_HINT}") from None


def check_run_matches(run: Any, trained: ProjectConfig, project: paths.ProjectPaths) -> None:
    """A DataError when the recorded MLflow run logged other decisive params than config.yaml holds.

    The run's params are the train stage's config (tracking.record.config); a run without them (not
    logged by train) is not compared.
    """
    logged = run.data.params
    for key, value in flatten(trained).items():
        expected = str(value)[: record.MAX_PARAM_LENGTH]
        if key.startswith(DECISIVE_SECTIONS) and key in logged and logged[key] != expected:
            raise DataError(
                f"{project.run_info_file}: MLflow run {run.info.run_id} trained another model than "
                f"{project.model_dir / 'config.yaml'} describes ({key} = {logged[key]!r:.60} there, "
                f"{expected!r:.60} in config.yaml: the files are of different runs); {REBUILD_HINT}"
            )


def contradiction(current: ProjectConfig, trained: ProjectConfig) -> str:
    """One line naming the keys where the current config differs from the model's, or ''."""
    now = {key: value for key, value in flatten(current).items() if key.startswith(DECISIVE_SECTIONS)}
    then = {key: value for key, value in flatten(trained).items() if key.startswith(DECISIVE_SECTIONS)}
    differing = sorted(key for key in now.keys() | then.keys() if now.get(key) != then.get(key))
    if not differing:
        return ""
    shown = ", ".join(f"{key} = {then.get(key)!r} (params now: {now.get(key)!r})" for key in differing[:3])
    more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
    return (
        f"note: data/model was trained with other settings than the current params: {shown}{more}; "
        f"using the model as trained (model {trained.model.name!r}) and logging to its own MLflow run"
    )


@contextlib.contextmanager
def model_run(project: paths.ProjectPaths, config: ProjectConfig, stage: str) -> Iterator[Any]:
    """Reopen the trained model's MLflow run (for evaluate and figures) for the duration of a stage.

    The run and its experiment are the ones train recorded in data/model/, whatever experiment the
    current config names; a current config that contradicts the model is reported in one line. If
    the store no longer has that run (a fresh clone with a DVC-restored model, another tracking
    server), a new run is started in the model's experiment instead, tagged with the missing id.
    """
    recorded = read_training_run(project)
    trained_config = read_trained_config(project)
    if note := contradiction(config, trained_config):
        print(note, flush=True)
    runs.use_experiment(project, trained_config.tracking.experiment_name)
    run = query.find_run(recorded.run_id)
    if run is None:
        log.warning(
            "MLflow run %s not found in %s; logging %s to a new run",
            recorded.run_id,
            runs.tracking_uri(project),
            stage,
        )
        with runs.stage_run(
            project,
            trained_config,
            stage,
            f"{trained_config.model.name}-{stage}",
            trained_config.tracking.experiment_name,
            [],
        ) as new_run:
            record.tag("train_run_id", recorded.run_id)
            yield new_run
        return
    check_run_matches(run, trained_config, project)
    experiment_name = query.experiment_name(run.info.experiment_id)
    with runs.stage_run(
        project, trained_config, stage, "", experiment_name, [], run_id=recorded.run_id
    ) as resumed:
        yield resumed


def write_run_info(project: paths.ProjectPaths, run: Any) -> None:
    """Record the train stage's MLflow run beside the model (mlflow_run.json), so later stages log into it."""
    write_json_atomic(
        project.run_info_file,
        {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "tracking_uri": query.current_uri(),
        },
    )


# What restores reports/train/metrics.json.
TRAIN_METRICS_REBUILD = (
    "restore it with `dvc checkout reports/train/metrics.json` or rebuild it with `dvc repro train`"
)


def read_train_metrics(project: paths.ProjectPaths) -> dict[str, Any]:
    """reports/train/metrics.json (loop.summarize's record), checked for the keys its readers use."""
    return records.read_json_object(
        project.train_metrics_file,
        {
            "val_accuracy": float,
            "val_loss": float,
            "train_seconds": (int, float),
            "seconds_per_epoch": (int, float),
        },
        TRAIN_METRICS_REBUILD,
    )
