"""What the train stage left in data/model/, read back by the stages and tools that use the model.

evaluate, model_figures, predict and serve follow the model they read, not the config they were
started with: its MLflow run and experiment come from mlflow_run.json, its settings from config.yaml.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml

from fashion_cnn import paths, tracking
from fashion_cnn.config import ProjectConfig, flatten, validate
from fashion_cnn.errors import ConfigError, DataError

log = logging.getLogger(__name__)

REBUILD_HINT = "run `dvc repro train` (or `dvc checkout data/model`)"
# The config keys that decide what a trained model is; data.* and tracking.* may differ freely.
DECISIVE_SECTIONS = ("seed", "model", "train")


def load_model(path: Path) -> Any:  # -> keras.Model (keras is imported lazily: it is slow to import)
    """Load a trained model in Keras safe mode: a .keras file cannot run code stored in it."""
    import keras

    if not path.is_file():
        raise DataError(f"{path}: missing ({REBUILD_HINT})")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a loadable Keras model ({error}); {REBUILD_HINT}") from None


@dataclass(frozen=True)
class TrainingRun:
    """The MLflow run the train stage logged the model to (data/model/mlflow_run.json)."""

    run_id: str
    experiment_id: str
    tracking_uri: str


def read_training_run(project: paths.ProjectPaths) -> TrainingRun:
    """The recorded run, or a DataError naming the file."""
    path = project.run_info_file
    try:
        record = json.loads(path.read_text())
        return TrainingRun(str(record["run_id"]), str(record["experiment_id"]), str(record["tracking_uri"]))
    except FileNotFoundError:
        raise DataError(f"{path}: missing ({REBUILD_HINT})") from None
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a run record ({error!r}); {REBUILD_HINT}") from None


def read_trained_config(project: paths.ProjectPaths) -> ProjectConfig:
    """The validated config the model was trained with (data/model/config.yaml)."""
    path = project.model_dir / "config.yaml"
    try:
        return validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError:
        raise DataError(f"{path}: missing ({REBUILD_HINT})") from None
    except (yaml.YAMLError, ConfigError, TypeError) as error:
        raise DataError(f"{path}: not the config of a trained model ({error}); {REBUILD_HINT}") from None


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
    tracking.use_experiment(project, trained_config.tracking.experiment_name)
    try:
        run = mlflow.get_run(recorded.run_id)
    except mlflow.exceptions.MlflowException:
        log.warning(
            "MLflow run %s not found in %s; logging %s to a new run",
            recorded.run_id,
            tracking.tracking_uri(project),
            stage,
        )
        with tracking.stage_run(
            project,
            trained_config,
            stage,
            f"{trained_config.model.name}-{stage}",
            trained_config.tracking.experiment_name,
            [],
        ) as new_run:
            mlflow.set_tag("train_run_id", recorded.run_id)
            yield new_run
        return
    experiment_name = mlflow.get_experiment(run.info.experiment_id).name
    with tracking.stage_run(
        project, trained_config, stage, "", experiment_name, [], run_id=recorded.run_id
    ) as resumed:
        yield resumed
