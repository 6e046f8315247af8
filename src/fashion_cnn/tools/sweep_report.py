"""The recipe sweep as a table and a picture: reports/recipe/sweep.csv and reports/recipe/frontier.png.

`python -m fashion_cnn.tools.sweep_report` (make recipe-report) reads the finished training runs of the
MLflow experiment the sweep logs to (`fashion-cnn-recipe`, see `make recipe-sweep`) and writes one
row per run: the params that varied, validation accuracy, test accuracy (finalists only: only they
ran the evaluate stage) and training minutes; the plot shows accuracy against training minutes.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path
from typing import Any

from fashion_cnn.config.cli import run_cli
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.tracking import query
from fashion_cnn.tracking import runs as tracking
from fashion_cnn.utils import paths
from fashion_cnn.utils.atomic import write_text_atomic

SWEEP_EXPERIMENT = "fashion-cnn-recipe"
# The targets: at most 15 minutes of training, at least 0.94 test accuracy.
BUDGET_MINUTES = 15.0
TARGET_ACCURACY = 0.94
# Described by model.name and model.parameters already (one column per layer key would drown the
# table), or derived from the train.* params (runtime.learning_rate is train.learning_rate on 1 replica).
HIDDEN_PARAM_PREFIXES = ("model.layers.", "model.summary", "runtime.")
# Columns of the table that the frontier's point labels leave out (model.name says it already).
UNLABELLED_COLUMNS = ("model.parameters",)
# The table's own columns; every other column is a param that varied.
REPORT_COLUMNS = ("run", "val_accuracy", "test_accuracy", "train_minutes", "run_id")
CSV_FILE = "sweep.csv"
FRONTIER_FILE = "frontier.png"


def sweep_runs(experiment_name: str) -> Any:  # -> pandas.DataFrame (imported by MLflow)
    """The finished training runs of the experiment, one row each, with the columns the report needs."""
    runs = query.search_runs(
        experiment_name,
        filter_string="attributes.status = 'FINISHED' and tags.stage = 'train'",
        order_by=["attributes.start_time ASC"],
    )
    # A multirun's parent run (tracking/sweep.py) groups its jobs and trains nothing: no train_seconds.
    if "metrics.train_seconds" in runs:
        runs = runs[runs["metrics.train_seconds"].notna()]
    if runs.empty or "metrics.train_seconds" not in runs:
        raise FashionCnnError(
            f"no finished training runs in MLflow experiment '{experiment_name}' at "
            f"{query.current_uri()}: run the sweep first (make recipe-sweep)"
        )
    return runs


def sweep_table(runs: Any) -> Any:  # -> pandas.DataFrame
    """Run name, the params that differ between runs, val/test accuracy and training minutes."""
    varied = [
        column
        for column in sorted(runs.columns)
        if column.startswith("params.")
        and not column.removeprefix("params.").startswith(HIDDEN_PARAM_PREFIXES)
        and runs[column].astype(str).nunique(dropna=False) > 1
    ]
    table = runs[["tags.mlflow.runName", *varied]].copy()
    table.columns = ["run", *(column.removeprefix("params.") for column in varied)]
    table["val_accuracy"] = runs["metrics.val_accuracy"].round(4)
    # Only finalists ran the evaluate stage; the others never saw the test set.
    table["test_accuracy"] = runs.get("metrics.test_accuracy", float("nan"))
    table["test_accuracy"] = table["test_accuracy"].round(4)
    table["train_minutes"] = (runs["metrics.train_seconds"] / 60).round(2)
    table["run_id"] = runs["run_id"]
    return table.sort_values(["train_minutes", "run"], kind="stable").reset_index(drop=True)


def point_label(row: Any, varied: list[str]) -> str:
    """What sets a run apart, e.g. 'small_resnet epochs=5' (the last part of each varied key)."""
    model_name = [str(row[key]) for key in varied if key == "model.name"]
    settings = [
        f"{key.rsplit('.', 1)[-1]}={row[key]}"
        for key in varied
        if key not in ("model.name", *UNLABELLED_COLUMNS)
    ]
    return " ".join(model_name + settings)


def frontier_figure(table: Any):  # -> matplotlib Figure
    """Validation accuracy against training minutes, one numbered point per run; finalists' test accuracy too.

    The numbers refer to a key beside the plot (one line per run), so long labels never overlap.
    """
    from fashion_cnn.figures import plotting

    figure = plotting.new_figure(11.5, 5.5)
    axes = figure.add_subplot()
    minutes, validation = table["train_minutes"].to_numpy(), table["val_accuracy"].to_numpy()
    axes.scatter(minutes, validation, color="tab:blue", zorder=3, label="validation accuracy (each run)")
    finalists = table[table["test_accuracy"].notna()]
    if not finalists.empty:
        axes.scatter(
            finalists["train_minutes"], finalists["test_accuracy"], marker="*", s=180,
            color="tab:red", zorder=4, label="test accuracy (finalists, evaluated once)",
        )  # fmt: skip
    # The frontier: the best validation accuracy reached within each training time.
    order = minutes.argsort(kind="stable")
    best = [validation[order[: index + 1]].max() for index in range(len(order))]
    axes.step(minutes[order], best, where="post", color="tab:blue", alpha=0.5, label="frontier (validation)")
    varied = [column for column in table.columns if column not in REPORT_COLUMNS]
    key = []
    for number, (_, row) in enumerate(table.iterrows(), start=1):
        axes.annotate(
            str(number), (row["train_minutes"], row["val_accuracy"]),
            textcoords="offset points", xytext=(4, 4), fontsize=8, color="#202020",
        )  # fmt: skip
        tested = not math.isnan(row["test_accuracy"])
        finalist = f", test {row['test_accuracy']:.4f}" if tested else ""
        key.append(
            f"{number}  {point_label(row, varied)}\n"
            f"   {row['train_minutes']:.1f} min, val {row['val_accuracy']:.4f}{finalist}"
        )
    axes.text(
        1.03, 1.0, "\n".join(key), transform=axes.transAxes, va="top", ha="left",
        fontsize=7.5, family="monospace", linespacing=1.5,
    )  # fmt: skip
    axes.axvline(BUDGET_MINUTES, color="gray", linestyle="--", linewidth=1)
    axes.axhline(TARGET_ACCURACY, color="gray", linestyle=":", linewidth=1)
    axes.margins(x=0.08, y=0.08)
    axes.set_xlabel("Training time (minutes, 2 CPU cores)")
    axes.set_ylabel("Accuracy")
    axes.set_title("Recipe sweep: accuracy against training time (budget 15 min, target 0.94)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    return figure


def write_report(table: Any, output_dir: Path) -> list[Path]:
    """sweep.csv and frontier.png in `output_dir`, each written atomically."""
    from fashion_cnn.figures import plotting

    buffer = io.StringIO()
    table.to_csv(buffer, index=False, lineterminator="\n")
    write_text_atomic(output_dir / CSV_FILE, buffer.getvalue())
    plotting.save_figure(frontier_figure(table), output_dir / FRONTIER_FILE)
    return [output_dir / CSV_FILE, output_dir / FRONTIER_FILE]


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fashion_cnn.tools.sweep_report`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiment", default=SWEEP_EXPERIMENT, help=f"MLflow experiment of the sweep ({SWEEP_EXPERIMENT})"
    )
    arguments = parser.parse_args(argv)

    def report() -> str:
        project = paths.project_paths()
        tracking.use_experiment(project, arguments.experiment)
        table = sweep_table(sweep_runs(arguments.experiment))
        written = write_report(table, project.recipe_reports_dir)
        shown = table.drop(columns=["run_id"]).to_string(index=False, na_rep="-")
        return shown + "\n" + "\n".join(f"wrote {path}" for path in written)

    return run_cli(report)


if __name__ == "__main__":
    sys.exit(main())
