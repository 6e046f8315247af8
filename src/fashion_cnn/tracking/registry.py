"""The MLflow Model Registry: the models users take away, by name, version and alias.

Each evaluated training run's logged model becomes a version of the registered model named after the
run's experiment (`fashion-cnn` for the default pipeline), tagged with the run, its test and validation
accuracy and the data's SHA-256 (the evaluate stage registers it: only then is the test accuracy known).
An alias, e.g. `champion`, points at the version to use (tools/promote.py moves it);
`models:/<name>@<alias>` and `models:/<name>/<version>` name a version for predict, serve and MLflow's
own `mlflow models serve`.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fashion_cnn.errors import DataError
from fashion_cnn.tracking import faults, query, runs
from fashion_cnn.utils import paths

REGISTRY_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")
# What a `models:/` URI must look like, for the one-line error.
URI_FORMS = "models:/<name>@<alias> or models:/<name>/<version>"
VALIDATION_TAG = "validation_accuracy"
# Aliases MLflow accepts: not `latest` and not a version-like `v3`.
ALIAS = re.compile(r"(?!latest$)(?!v\d+$)[A-Za-z0-9_-]{1,255}")


@dataclass(frozen=True)
class Version:
    """A registered model version and the tags evaluate gave it."""

    name: str
    version: int
    run_id: str
    tags: dict[str, str]
    aliases: list[str]


def is_registry_uri(model: str) -> bool:
    """Whether `model` names a registered model (models:/...) rather than a file."""
    return model.startswith("models:/")


def check_uri(uri: str) -> re.Match[str]:
    """The parts of a `models:/` URI, or a DataError saying which forms are allowed."""
    match = REGISTRY_URI.fullmatch(uri)
    if match is None:
        raise DataError(f"--model {uri!r}: not a registered model URI; use {URI_FORMS}")
    return match


def _version(model_version) -> Version:  # mlflow.entities.model_registry.ModelVersion
    return Version(
        model_version.name,
        int(model_version.version),
        model_version.run_id,
        dict(model_version.tags),
        list(model_version.aliases),
    )


def versions(name: str) -> list[Version]:
    """Every version of the registered model `name`, oldest first (empty when it does not exist)."""
    client = MlflowClient()
    found = client.search_model_versions(f"name = '{name}'")
    if not found:
        return []
    # A search leaves the aliases out; the registered model has them all.
    aliases: dict[int, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(int(version), []).append(alias)
    listed = [replace(_version(item), aliases=sorted(aliases.get(int(item.version), []))) for item in found]
    return sorted(listed, key=lambda item: item.version)


def register(run_id: str, model_uri: str, name: str, tags: dict[str, str]) -> Version:
    """Make the model `run_id` logged (`model_uri`, models:/m-...) a version of `name` with `tags`
    (MLflow's errors are raised).

    A run registered before (evaluate run again) keeps its version, with its tags updated: one run,
    one version.
    """
    client = MlflowClient()
    earlier = [item for item in versions(name) if item.run_id == run_id]
    if earlier:
        version = earlier[-1].version
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, value)
    else:
        created = mlflow.register_model(model_uri, name, tags=tags)
        version = int(created.version)
    return _version(client.get_model_version(name, str(version)))


def register_safely(run_id: str, model_uri: str, name: str, tags: dict[str, str]) -> Version | None:
    """register under the keep-going policy: None (and the failure named in the stage's last line)
    when the store or server fails."""
    return faults.log_safely(register, run_id, model_uri, name, tags)


def set_alias(name: str, alias: str, version: int) -> Version:
    """Point `alias` of the registered model `name` at `version` (moved from any other version)."""
    client = MlflowClient()
    client.set_registered_model_alias(name, alias, str(version))
    return _version(client.get_model_version(name, str(version)))


def best_by_validation(name: str) -> Version:
    """The version with the highest validation accuracy tag (the newest among equals)."""
    tagged = [item for item in versions(name) if VALIDATION_TAG in item.tags]
    if not tagged:
        raise DataError(
            f"registered model {name!r} has no version with a {VALIDATION_TAG} tag: run the pipeline "
            f"(`make repro`), whose evaluate stage registers each trained model"
        )
    return max(tagged, key=lambda item: (float(item.tags[VALIDATION_TAG]), item.version))


def describe(uri: str) -> str:
    """'version 3, MLflow run <id>' for a `models:/` URI (read from the registry)."""
    match = check_uri(uri)
    client = MlflowClient()
    name = match["name"]
    if match["alias"]:
        found = client.get_model_version_by_alias(name, match["alias"])
    else:
        found = client.get_model_version(name, match["version"])
    return f"version {found.version}, MLflow run {found.run_id}"


def download(uri: str, destination: Path) -> Path:
    """Download the registered model `uri` names into `destination`; the path of its .keras file."""
    check_uri(uri)
    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
    except MlflowException as error:
        first_line = str(error.message).strip().splitlines()[0] if str(error.message).strip() else ""
        raise DataError(
            f"--model {uri}: not found in {mlflow.get_tracking_uri()} ({first_line[:300]}); "
            f"`python -m fashion_cnn.tools.promote --list` lists the versions and aliases"
        ) from None
    found = sorted(folder.rglob("*.keras"))
    if len(found) != 1:
        raise DataError(f"--model {uri}: the registered model holds {len(found)} .keras files, expected one")
    return found[0]


@contextlib.contextmanager
def model_file(model: str | None, project_paths: Callable[[], paths.ProjectPaths]) -> Iterator[Path]:
    """The local .keras file `model` names: the project's data/model/model.keras when None, the file
    itself, or a registered model downloaded (from $MLFLOW_TRACKING_URI, else the project's mlflow.db)
    into a temporary folder that lives as long as the block."""
    if model is None:
        yield project_paths().model_file
    elif not is_registry_uri(model):
        yield Path(model)
    else:
        check_uri(model)
        runs.connect(runs.tracking_uri(project_paths()))
        with tempfile.TemporaryDirectory(prefix="fashion-cnn-model-") as folder:
            yield download(model, Path(folder))


def register_active_run(tags: dict[str, str]) -> str:
    """Register the model the active run logged (evaluate's run is the training run) as a version of
    the registered model named after the run's experiment; the line that says what happened."""
    active = mlflow.active_run()
    run = query.find_run(active.info.run_id) if active is not None else None
    model_uri = faults.log_safely(query.ready_model_uri, run) if run is not None else None
    if model_uri is None:
        run_id = active.info.run_id if active is not None else "none"
        return f"no model version registered: MLflow run {run_id} has no logged model"
    name = query.experiment_name(run.info.experiment_id)
    version = register_safely(run.info.run_id, model_uri, name, {"run_id": run.info.run_id, **tags})
    if version is None:
        return "no model version registered: the tracking store failed (the last line names the call)"
    return f"registered the model as models:/{name}/{version.version}"
