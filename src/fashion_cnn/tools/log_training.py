"""Log a trained model's records from data/model and reports/train into its MLflow run: for a run
whose tracking server stopped answering during training (the train stage's last line says so).

`python -m fashion_cnn.tools.log_training` reads the run from data/model/mlflow_run.json and logs
what that run lacks: the config as params, the per-epoch metrics of reports/train/history.csv, the
totals of reports/train/metrics.json, the summary, config and history files, and the model; then it
marks the run FINISHED. Epochs and a model the run already has are not logged twice.
"""

from __future__ import annotations

import argparse
import sys

from fashion_cnn.config.cli import run_cli
from fashion_cnn.data.splits import load_pixels
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.tracking import query, record, runs
from fashion_cnn.training import history, outputs, trained_model
from fashion_cnn.utils import paths, records


def log_training(project: paths.ProjectPaths) -> str:
    """Log what the recorded training run lacks from the files on disk; a line saying what was logged."""
    recorded = trained_model.read_training_run(project)
    config = trained_model.read_trained_config(project)
    epochs = {int(row["epoch"]): row for row in history.read_history(project.history_file, history.COLUMNS)}
    totals = trained_model.read_train_metrics(project)
    summary = records.read_text(project.model_dir / outputs.SUMMARY_FILE, trained_model.REBUILD_HINT)
    model = trained_model.load_model(project.model_file)
    # The input example train logged: the first validation images, as grey levels.
    examples = load_pixels(project.prepared_dir, "validation").images[:2]  # (2, 28, 28, 1)
    uri = recorded.tracking_uri
    runs.connect(uri)
    run = query.find_run(recorded.run_id)
    if run is None:
        raise FashionCnnError(
            f"{project.run_info_file}: MLflow run {recorded.run_id} is not in {uri}; it cannot be completed "
            f"there: `dvc repro --force train` trains and logs a new run"
        )
    missing_epochs = sorted(set(epochs) - query.logged_steps(run.info.run_id, "epoch_seconds"))
    has_model = query.has_ready_model(run)
    with runs.completing_run(run.info.run_id):
        record.config(config)
        for epoch in missing_epochs:
            record.metrics({key: value for key, value in epochs[epoch].items() if key != "epoch"}, step=epoch)
        outputs.log(project, summary, totals, None if has_model else model, examples)
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
