"""The race: each preset's training time against the seed recipe's, on the same machine, in one run.

`python -m fashion_cnn.tools.race` (make race) reads conf/race.yaml, trains the seed recipe (params.yaml
as committed) for its first `seed_epochs_timed` epochs and extrapolates its whole training time, then
runs the whole pipeline once for each raced preset, each in a clean copy, and writes reports/race.json
and reports/race.png. Every run is logged to the project's MLflow store; the report lists the run ids.
`--sweep` runs the sweeps of conf/race.yaml (make recipe-sweep); `--spread` trains and tests the winner
with the extra seeds of conf/race.yaml (make race-spread). Let nothing else run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fashion_cnn.config.cli import run_cli
from fashion_cnn.reproduction import clean_copy as reproduction
from fashion_cnn.reproduction import race_report
from fashion_cnn.tracking import query
from fashion_cnn.training import history
from fashion_cnn.utils import machine, paths


def tracking_environment(root: Path) -> dict[str, str]:
    """The runs' environment: the project's own MLflow store unless MLFLOW_TRACKING_URI names one."""
    return os.environ | {
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    }


@contextmanager
def clean_copy(root: Path, overrides: list[str], label: str) -> Iterator[Path]:
    """A clean copy of the project composed with `overrides`, removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=f"fashion-cnn-race-{label}-"))
    try:
        reproduction.make_clean_copy(root, workdir, overrides)
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def what_ran(workdir: Path, environment: dict[str, str]) -> dict[str, Any]:
    """The run's MLflow id and what took effect (device, XLA, dtype policy), read back from the run."""
    run_id = reproduction.read_json(workdir / "data" / "model" / "mlflow_run.json")["run_id"]
    params = query.run_params(environment["MLFLOW_TRACKING_URI"], run_id)
    keys = ("device", "jit_compile", "dtype_policy", "deterministic", "global_batch_size")
    return {"mlflow_run_id": run_id, "ran_as": {key: params.get(f"runtime.{key}") for key in keys}}


def time_seed(root: Path, epochs_timed: int, environment: dict[str, str]) -> dict[str, Any]:
    """Train the seed recipe for its first epochs in a clean copy; its whole training time, extrapolated."""
    total_epochs = int(committed_params(root)["train"]["epochs"])
    with clean_copy(root, [f"train.epochs={epochs_timed}"], "seed") as workdir:
        reproduction.run(["dvc", "repro", "train"], workdir, environment)
        metrics = reproduction.read_json(workdir / "reports" / "train" / "metrics.json")
        epoch_seconds = epoch_times(workdir / "reports" / "train" / "history.csv")
        ran = what_ran(workdir, environment)
    seconds = race_report.seed_train_seconds(metrics["train_seconds"], epoch_seconds, total_epochs)
    return {
        "epochs_timed": len(epoch_seconds),
        "epochs": total_epochs,
        "epoch_seconds": [round(value, 1) for value in epoch_seconds],
        "timed_train_seconds": metrics["train_seconds"],
        "train_seconds": round(seconds, 1),
        # The whole recipe's accuracy is the recorded run's: the race trains only its first epochs.
        "test_accuracy": reproduction.read_accuracy(root / "reports" / "metrics.json"),
        "test_accuracy_from": "reports/metrics.json (the recorded 10-epoch run)",
        **ran,
    }


def epoch_times(history_file: Path) -> list[float]:
    """Seconds of each epoch, as the train stage recorded them in history.csv."""
    return [row["epoch_seconds"] for row in history.read_history(history_file, history.COLUMNS)]


def committed_params(root: Path) -> dict[str, Any]:
    """params.yaml as committed (the seed recipe)."""
    import yaml

    return yaml.safe_load((root / "params.yaml").read_text())


def run_preset(root: Path, preset: str, environment: dict[str, str], extra: list[str] = ()) -> dict[str, Any]:
    """The whole pipeline for one preset in a clean copy: its accuracies, training time and run."""
    with clean_copy(root, [f"experiment={preset}", *extra], preset) as workdir:
        reproduction.run(["dvc", "repro"], workdir, environment)
        train_metrics = reproduction.read_json(workdir / "reports" / "train" / "metrics.json")
        rows = history.read_history(workdir / "reports" / "train" / "history.csv")
        ran = what_ran(workdir, environment)
        return {
            "batch_size": int(ran["ran_as"]["global_batch_size"]),
            "epochs": len(rows),
            "test_accuracy": reproduction.read_accuracy(workdir / "reports" / "metrics.json"),
            "val_accuracy": round(train_metrics["val_accuracy"], 4),
            "train_seconds": train_metrics["train_seconds"],
            **ran,
        }


def race(root: Path, presets: list[str] | None) -> str:
    """Time the seed recipe and every raced preset; write reports/race.json and race.png."""
    config = race_report.load_race_config(root)
    environment = tracking_environment(root)
    started = datetime.datetime.now()
    seed = time_seed(root, config.seed_epochs_timed, environment)
    print(f"seed recipe: {seed['train_seconds']:.0f} s ({seed['epochs_timed']} epochs timed)", flush=True)
    rows = []
    for preset in presets or config.presets:
        row = race_report.preset_row(preset, run_preset(root, preset, environment), seed["train_seconds"])
        print(f"{preset}: test {row['test_accuracy']:.4f}, time ratio {row['time_ratio']:.3f}", flush=True)
        rows.append(row)
    report = {
        "date": started.date().isoformat(),
        "machine": machine.hardware(),
        "versions": machine.versions(),
        "ran_alone": "make race; nothing else should run beside it (docs/race.md)",
        "race_minutes": round((datetime.datetime.now() - started).total_seconds() / 60, 1),
        "config": config.model_dump(),
        "seed": seed,
        "rows": rows,
        "winner_by_validation": race_report.choose_winner(rows, config.budget_ratio),
        "verdicts": race_report.verdicts(rows, config),
    }
    race_report.write_report(root, report)
    return f"wrote {race_report.RACE_JSON} and {race_report.RACE_FIGURE} ({report['race_minutes']} min)"


def spread(root: Path) -> str:
    """Train and test the winner with each extra seed; add the spread to reports/race.json."""
    config = race_report.load_race_config(root)
    report = reproduction.read_json(root / race_report.RACE_JSON)
    environment = tracking_environment(root)
    runs = [
        {"seed": seed, **run_preset(root, config.winner, environment, [f"seed={seed}"])}
        for seed in config.spread_seeds
    ]
    first = [row for row in report["rows"] if row["preset"] == config.winner]
    accuracies = [row["test_accuracy"] for row in first + runs]
    report["winner_spread"] = {
        "preset": config.winner,
        "runs": runs,
        "test_accuracies": accuracies,
        "mean": round(statistics.mean(accuracies), 4),
        "min": min(accuracies),
        "max": max(accuracies),
    }
    race_report.write_report(root, report)
    low, high = min(accuracies), max(accuracies)
    return f"{config.winner} over {len(accuracies)} seeds: test accuracy {low:.4f} to {high:.4f}"


def sweep(root: Path) -> str:
    """The sweeps of conf/race.yaml: Hydra multiruns of the train stage, scored on validation only."""
    config = race_report.load_race_config(root)
    for line in config.sweeps:
        command = [sys.executable, "-m", "fashion_cnn.stages.train", "-m", f"experiment={config.sweep_base}"]
        reproduction.run([*command, *shlex.split(line)], root, tracking_environment(root))
    return f"swept {len(config.sweeps)} multirun(s) on experiment={config.sweep_base} (make recipe-report)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fashion_cnn.tools.race`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--sweep", action="store_true", help="run the sweeps of conf/race.yaml")
    action.add_argument(
        "--spread", action="store_true", help="train and test the winner with the extra seeds"
    )
    parser.add_argument("--presets", help="comma-separated subset of conf/race.yaml's presets to race")
    arguments = parser.parse_args(argv)
    root = paths.find_root()
    if arguments.sweep:
        return run_cli(lambda: sweep(root))
    if arguments.spread:
        return run_cli(lambda: spread(root))
    presets = arguments.presets.split(",") if arguments.presets else None
    return run_cli(lambda: race(root, presets))


if __name__ == "__main__":
    sys.exit(main())
