"""Log a trained model's records from data/model and reports/train into its MLflow run: for a run
whose tracking server stopped answering during training (the train stage's last line says so).

`python -m fashion_cnn.tools.log_training` reads the run from data/model/mlflow_run.json and logs
what that run lacks: the config as params, the per-epoch metrics of reports/train/history.csv, the
totals of reports/train/metrics.json, the summary, config and history files, and the model; then it
marks the run FINISHED. Epochs and a model the run already has are not logged twice.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

from fashion_cnn.config.cli import run_cli
from fashion_cnn.data.splits import load_split
from fashion_cnn.errors import DataError, FashionCnnError
from fashion_cnn.tracking import faults, runs
from fashion_cnn.training import history, loop, trained_model
from fashion_cnn.utils import paths

# The totals of reports/train/metrics.json that train logs as metrics.
TOTALS = ("train_seconds", "seconds_per_epoch")


def read_epochs(project: paths.ProjectPaths) -> dict[int, dict[str, float]]:
    """Epoch -> the metrics train logged for it (every column of history.csv but `epoch`)."""
    path = project.history_file
    try:
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
        return {
            int(row["epoch"]): {column: float(row[column]) for column in history.COLUMNS if column != "epoch"}
            for row in rows
        }
    except FileNotFoundError:
        raise DataError(f"{path}: missing ({trained_model.REBUILD_HINT})") from None
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: not a training history ({error!r}); {trained_model.REBUILD_HINT}") from None


def read_totals(project: paths.ProjectPaths) -> dict[str, float]:
    """train_seconds and seconds_per_epoch from reports/train/metrics.json."""
    path = project.train_metrics_file
    try:
        metrics = json.loads(path.read_text())
        return {name: float(metrics[name]) for name in TOTALS}
    except FileNotFoundError:
        raise DataError(f"{path}: missing ({trained_model.REBUILD_HINT})") from None
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: not train's metrics ({error!r}); {trained_model.REBUILD_HINT}") from None


def log_training(project: paths.ProjectPaths) -> str:
    """Log what the recorded training run lacks from the files on disk; a line saying what was logged."""
    import mlflow

    recorded = trained_model.read_training_run(project)
    config = trained_model.read_trained_config(project)
    epochs, totals = read_epochs(project), read_totals(project)
    summary_file = project.model_dir / "summary.txt"
    if not summary_file.is_file():
        raise DataError(f"{summary_file}: missing ({trained_model.REBUILD_HINT})")
    summary = summary_file.read_text()
    model = trained_model.load_model(project.model_file)
    # The input example train logged: the first validation images.
    examples = load_split(project.prepared_dir, "validation").images[:2]  # (2, 28, 28, 1)
    uri = recorded.tracking_uri
    runs.connect(uri)
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(recorded.run_id)
    except mlflow.exceptions.MlflowException as error:
        raise FashionCnnError(
            f"{project.run_info_file}: MLflow run {recorded.run_id} is not in {uri} ({str(error)[:200]}); "
            f"it cannot be completed there: `dvc repro --force train` trains and logs a new run"
        ) from None
    logged_epochs = {point.step for point in client.get_metric_history(run.info.run_id, "epoch_seconds")}
    missing_epochs = sorted(set(epochs) - logged_epochs)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    has_model = any(item.status == mlflow.entities.LoggedModelStatus.READY for item in models)
    try:
        with mlflow.start_run(run_id=run.info.run_id):
            runs.log_config(config)
            for epoch in missing_epochs:
                mlflow.log_metrics(epochs[epoch], step=epoch)
            mlflow.log_metrics(totals)
            mlflow.log_text(summary, "model_summary.txt")
            mlflow.log_artifact(str(project.model_dir / "config.yaml"))
            mlflow.log_artifact(str(project.history_file))
            if not has_model:
                loop.log_model(model, examples)
    except faults.LOGGING_ERRORS as error:
        message = " ".join(str(error).split())[:300]
        raise FashionCnnError(
            f"logging into MLflow run {run.info.run_id} at {uri} failed ({message}); the run is marked "
            f"FAILED until this succeeds: run `{runs.LOG_TRAINING_COMMAND}` again once the server answers"
        ) from None
    model_note = "the model" if not has_model else "no model (it had one)"
    return (
        f"logged into MLflow run {run.info.run_id} at {uri}: the config, {len(missing_epochs)} epoch(s) of "
        f"metrics ({len(epochs) - len(missing_epochs)} were there), the totals, summary, config and history "
        f"files and {model_note}; the run is FINISHED"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fashion_cnn.tools.log_training`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    return run_cli(lambda: log_training(paths.project_paths()))


if __name__ == "__main__":
    sys.exit(main())
