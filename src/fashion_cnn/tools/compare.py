"""Print the latest training runs side by side: the params that differ, test accuracy, epoch time.

`python -m fashion_cnn.tools.compare [--last N]` (make compare) reads the same MLflow store the stages
write to ($MLFLOW_TRACKING_URI, else mlflow.db in the repository root).
"""

from __future__ import annotations

import argparse
import os
import sys

from fashion_cnn.config.cli import run_cli
from fashion_cnn.config.schema import read_params_file
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.tracking import faults, query
from fashion_cnn.tracking import runs as tracking
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths

# Always shown, whether or not they differ.
METRIC_COLUMNS = {
    "metrics.test_accuracy": "test_accuracy",
    "metrics.val_accuracy": "val_accuracy",
    "metrics.seconds_per_epoch": "s/epoch",
}


def latest_runs_table(experiment_name: str, last: int) -> str:
    """The `last` most recent runs of the experiment as a text table, newest first."""
    runs = query.search_runs(experiment_name, max_results=last, order_by=["attributes.start_time DESC"])
    if runs.empty:
        raise FashionCnnError(f"no runs in MLflow experiment '{experiment_name}' at {query.current_uri()}")
    param_columns = [
        column
        for column in runs.columns
        if column.startswith("params.") and runs[column].astype(str).nunique(dropna=False) > 1
    ]
    table = runs[["tags.mlflow.runName", "status", *param_columns]].copy()
    for column, title in METRIC_COLUMNS.items():
        if column in runs:
            table[title] = runs[column].round(4)
    table.columns = [column.removeprefix("params.").removeprefix("tags.mlflow.") for column in table.columns]
    experiment_ids = sorted(set(runs["experiment_id"]))
    url = tracking.compare_url(ui_base_url(), experiment_ids, list(runs["run_id"]))
    return table.to_string(index=False, na_rep="-") + f"\n\nside by side in the MLflow UI (make ui): {url}"


def ui_base_url() -> str:
    """Where the UI of these runs is: the tracking server, or `make ui` on $MLFLOW_PORT (default 5000)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if faults.is_remote(uri):
        return uri
    return f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT') or 5000}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fashion_cnn.tools.compare`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--last", type=int, default=10, help="how many recent runs to show (default 10)")
    arguments = parser.parse_args(argv)
    if arguments.last <= 0:
        parser.error(f"--last = {arguments.last}: must be a positive number of runs")

    def table() -> str:
        project = paths.project_paths()
        config = ProjectConfig.from_params(read_params_file(project.params_file))
        tracking.use_experiment(project, config.tracking.experiment_name)
        return latest_runs_table(config.tracking.experiment_name, arguments.last)

    return run_cli(table)


if __name__ == "__main__":
    sys.exit(main())
