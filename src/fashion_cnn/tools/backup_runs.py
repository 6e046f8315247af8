"""Back up the run history: the local MLflow store (mlflow.db) and its artifacts (mlartifacts/).

`python -m fashion_cnn.tools.backup_runs [DESTINATION]` (`make backup-runs`) copies mlflow.db with
SQLite's online backup (a consistent snapshot, even while a stage logs to it), then mlartifacts/,
into DESTINATION (default backups/runs-<UTC time> beside mlflow.db). The store is checked first: a
damaged one is refused. The folder appears complete or not at all. Restoring: docs/tracking.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
from pathlib import Path

from fashion_cnn.config.cli import run_cli
from fashion_cnn.errors import DataError
from fashion_cnn.tracking import store
from fashion_cnn.utils import paths

BACKUPS_FOLDER = "backups"


def backup_runs(store_root: Path, destination: Path | None = None) -> Path:
    """Copy store_root's mlflow.db and mlartifacts/ into `destination` (a new folder); return it."""
    database = store_root / "mlflow.db"
    if not database.is_file():
        raise DataError(f"{database}: no MLflow store to back up (a stage makes it when it first runs)")
    if destination is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        destination = store_root / BACKUPS_FOLDER / f"runs-{stamp}"
    if destination.exists():
        raise DataError(f"{destination}: already exists; name a new folder for the backup")
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        store.backup_store(database, partial / "mlflow.db")
        # The artifacts after the database: every run in the copy has its artifacts in it.
        if (store_root / "mlartifacts").is_dir():
            shutil.copytree(store_root / "mlartifacts", partial / "mlartifacts", symlinks=True)
        os.replace(partial, destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return destination


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fashion_cnn.tools.backup_runs`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "destination", nargs="?", type=Path, help="a new folder (default: backups/runs-<time>)"
    )
    arguments = parser.parse_args(argv)
    store_root = paths.project_paths().store_root

    def action() -> str:
        destination = backup_runs(store_root, arguments.destination)
        return f"backed up {store_root / 'mlflow.db'} and mlartifacts/ to {destination}"

    return run_cli(action)


if __name__ == "__main__":
    sys.exit(main())
