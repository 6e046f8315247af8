"""Point a registered model's alias at a version: `python -m fashion_cnn.tools.promote --best` (make promote).

Every evaluated training run is a version of the registered model named after its experiment
(fashion_cnn.tracking.registry). This moves an alias (default `champion`) to the version you choose
(`--version N`) or to the one with the best validation accuracy (`--best`; never the test accuracy, so
the test split stays an honest estimate), and `--list` shows the versions with their tags and aliases.
Then `models:/<name>@<alias>` names that version for predict, serve and `mlflow models serve`.
It reads the store the stages write to ($MLFLOW_TRACKING_URI, else mlflow.db in the repository root).
"""

from __future__ import annotations

import argparse
import sys

from fashion_cnn.config.cli import run_cli
from fashion_cnn.config.schema import read_params_file
from fashion_cnn.errors import DataError
from fashion_cnn.tracking import query, registry, runs
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths

DEFAULT_ALIAS = "champion"


def listing(name: str) -> str:
    """The versions of `name`, newest first: version, aliases, validation and test accuracy, run."""
    found = registry.versions(name)
    if not found:
        raise DataError(f"no registered model {name!r} in {query.current_uri()}: run `make repro`")
    lines = [f"{'version':>7}  {'aliases':<16} {'val_acc':>7} {'test_acc':>8}  run"]
    for item in reversed(found):
        lines.append(
            f"{item.version:>7}  {','.join(item.aliases) or '-':<16} "
            f"{item.tags.get(registry.VALIDATION_TAG, '-'):>7} {item.tags.get('test_accuracy', '-'):>8}  "
            f"{item.run_id}"
        )
    return "\n".join(lines)


def promote(name: str, alias: str, version: int | None) -> str:
    """Move `alias` to `version` (None: the best by validation accuracy); the line saying so."""
    if version is None:
        version = registry.best_by_validation(name).version
    else:
        known = {item.version for item in registry.versions(name)}
        if version not in known:
            have = ", ".join(str(number) for number in sorted(known)) or "none"
            raise DataError(
                f"--version {version}: registered model {name!r} has no such version (has: {have})"
            )
    moved = registry.set_alias(name, alias, version)
    accuracy = moved.tags.get(registry.VALIDATION_TAG, "unknown")
    return (
        f"models:/{name}@{alias} -> version {moved.version} (validation accuracy {accuracy}, "
        f"MLflow run {moved.run_id})"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fashion_cnn.tools.promote`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--version", type=int, help="the version the alias moves to")
    choice.add_argument("--best", action="store_true", help="the version with the best validation accuracy")
    choice.add_argument("--list", action="store_true", help="list the versions, their tags and aliases")
    parser.add_argument("--alias", default=DEFAULT_ALIAS, help=f"the alias to move (default {DEFAULT_ALIAS})")
    parser.add_argument(
        "--name", help="the registered model (default: params.yaml's tracking.experiment_name)"
    )
    arguments = parser.parse_args(argv)
    if arguments.version is not None and arguments.version < 1:
        parser.error(f"--version = {arguments.version}: versions are numbered from 1")
    if not registry.ALIAS.fullmatch(arguments.alias):
        parser.error(
            f"--alias = {arguments.alias!r}: letters, digits, '_' and '-', not 'latest' nor a version like v3"
        )

    def action() -> str:
        project = paths.project_paths()
        name = arguments.name
        if name is None:
            name = ProjectConfig.from_params(read_params_file(project.params_file)).tracking.experiment_name
        runs.connect(runs.tracking_uri(project))
        if arguments.list:
            return listing(name)
        return promote(name, arguments.alias, arguments.version)

    return run_cli(action)


if __name__ == "__main__":
    sys.exit(main())
