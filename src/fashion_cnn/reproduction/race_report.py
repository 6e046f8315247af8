"""The race's config (conf/race.yaml), its arithmetic and its report: reports/race.json and race.png.

`make race` (fashion_cnn.tools.race) trains the seed recipe for a few whole epochs and each raced
preset completely, on the same machine in one run; this module turns those runs into rows: each
preset's training time over the seed recipe's (`time_ratio`), its accuracies and its MLflow run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fashion_cnn.errors import FashionCnnError

RACE_CONFIG = Path("conf/race.yaml")
RACE_JSON = Path("reports/race.json")
RACE_FIGURE = Path("reports/race.png")
# Batch size from which a preset counts as large-batch (the GPU preset's class).
LARGE_BATCH = 256


class RaceConfig(BaseModel):
    """conf/race.yaml; every key is explained there."""

    model_config = ConfigDict(extra="forbid")

    seed_epochs_timed: Annotated[int, Field(ge=1)]
    budget_ratio: Annotated[float, Field(gt=0)]
    target_accuracy: Annotated[float, Field(gt=0, le=1)]
    large_batch_accuracy: Annotated[float, Field(gt=0, le=1)]
    presets: Annotated[list[str], Field(min_length=1)]
    winner: str
    spread_seeds: list[int]
    sweep_base: str
    sweeps: list[str]


def load_race_config(root: Path) -> RaceConfig:
    """conf/race.yaml, validated; every preset it names must exist in conf/experiment/."""
    path = root / RACE_CONFIG
    try:
        race = RaceConfig.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError:
        raise FashionCnnError(f"{path}: missing (it lists the presets `make race` times)") from None
    except (yaml.YAMLError, ValidationError) as error:
        first = str(error).splitlines()[:3]
        raise FashionCnnError(f"{path}: invalid ({' '.join(line.strip() for line in first)})") from None
    named = {*race.presets, race.winner, race.sweep_base}
    missing = sorted(name for name in named if not (root / "conf" / "experiment" / f"{name}.yaml").is_file())
    if missing:
        available = sorted(path.stem for path in (root / "conf" / "experiment").glob("*.yaml"))
        raise FashionCnnError(
            f"{path}: no preset {', '.join(missing)} in conf/experiment/ (there are: {', '.join(available)})"
        )
    return race


def seed_train_seconds(train_seconds: float, epoch_seconds: list[float], total_epochs: int) -> float:
    """The seed recipe's whole training time from a run of its first epochs: that run's time plus the
    remaining epochs at the pace of its last epoch (the first epoch also traces the graph)."""
    if not epoch_seconds or len(epoch_seconds) > total_epochs:
        raise FashionCnnError(f"{len(epoch_seconds)} timed seed epochs for a recipe of {total_epochs}")
    return train_seconds + (total_epochs - len(epoch_seconds)) * epoch_seconds[-1]


def preset_row(preset: str, run: dict[str, Any], seed_seconds: float) -> dict[str, Any]:
    """One row of reports/race.json from what a preset's run wrote and logged (`run`, see tools/race)."""
    return {
        "preset": preset,
        "batch_size": run["batch_size"],
        "epochs": run["epochs"],
        "test_accuracy": run["test_accuracy"],
        "val_accuracy": run["val_accuracy"],
        "train_seconds": run["train_seconds"],
        "seed_train_seconds": round(seed_seconds, 1),
        "time_ratio": round(run["train_seconds"] / seed_seconds, 3),
        "ran_as": run["ran_as"],
        "mlflow_run_id": run["mlflow_run_id"],
    }


def choose_winner(rows: list[dict[str, Any]], budget_ratio: float) -> str | None:
    """The preset with the best validation accuracy within the budget (never chosen on test accuracy)."""
    within = [row for row in rows if row["time_ratio"] <= budget_ratio]
    return max(within, key=lambda row: row["val_accuracy"])["preset"] if within else None


def verdicts(rows: list[dict[str, Any]], race: RaceConfig) -> dict[str, bool]:
    """Whether the race's two goals were met by the rows: accuracy within the budget, and a large
    batch that keeps the seed's accuracy."""
    return {
        "target_within_budget": any(
            row["test_accuracy"] >= race.target_accuracy and row["time_ratio"] <= race.budget_ratio
            for row in rows
        ),
        "large_batch_keeps_accuracy": any(
            row["batch_size"] >= LARGE_BATCH and row["test_accuracy"] >= race.large_batch_accuracy
            for row in rows
        ),
    }


def race_figure(report: dict[str, Any]):  # -> matplotlib Figure
    """Test accuracy against time_ratio: the seed at 1.0, each preset, the budget and the target."""
    from fashion_cnn.figures import plotting

    race = report["config"]
    figure = plotting.new_figure(9.5, 5.2)
    axes = figure.add_subplot()
    seed = report["seed"]
    axes.scatter([1.0], [seed["test_accuracy"]], color="tab:gray", s=70, zorder=3)
    axes.annotate(
        f"seed recipe: {seed['test_accuracy']:.4f} (recorded run)\n"
        f"{seed['train_seconds']:.0f} s of training "
        f"({seed['epochs_timed']} of {seed['epochs']} epochs timed)",
        (1.0, seed["test_accuracy"]),
        textcoords="offset points", xytext=(-8, 10), ha="right", fontsize=9,
    )  # fmt: skip
    # Labels of neighbouring points alternate above and below them, so they never overlap.
    for index, row in enumerate(sorted(report["rows"], key=lambda row: row["time_ratio"])):
        large = row["batch_size"] >= LARGE_BATCH
        axes.scatter(
            [row["time_ratio"]], [row["test_accuracy"]], zorder=4, s=70,
            marker="s" if large else "o", color="tab:orange" if large else "tab:blue",
        )  # fmt: skip
        axes.annotate(
            f"{row['preset']} (batch {row['batch_size']})\n"
            f"{row['test_accuracy']:.4f}, ratio {row['time_ratio']:.2f}",
            (row["time_ratio"], row["test_accuracy"]), textcoords="offset points", fontsize=9,
            xytext=(8, 8) if index % 2 == 0 else (8, -26),
        )  # fmt: skip
    axes.axvline(race["budget_ratio"], color="tab:red", linestyle="--", linewidth=1)
    axes.axhline(race["target_accuracy"], color="tab:green", linestyle=":", linewidth=1)
    axes.text(race["budget_ratio"], axes.get_ylim()[0], f" budget {race['budget_ratio']:g}", color="tab:red",
              va="bottom", fontsize=9)  # fmt: skip
    axes.text(1.0, race["target_accuracy"], f"target {race['target_accuracy']:g} ", color="tab:green",
              ha="right", va="bottom", fontsize=9)  # fmt: skip
    axes.set_xlim(0, 1.1)
    axes.set_xlabel("training time / the seed recipe's training time (same machine, same run)")
    axes.set_ylabel("test accuracy (10,000 images)")
    machine = report["machine"]
    axes.set_title(f"The race: {machine['cpu_model']}, {machine['logical_cpus']} CPUs, {report['date']}")
    return figure


def write_report(root: Path, report: dict[str, Any]) -> None:
    """reports/race.json and reports/race.png, each written atomically."""
    import json

    from fashion_cnn.figures import plotting
    from fashion_cnn.utils.atomic import write_text_atomic

    write_text_atomic(root / RACE_JSON, json.dumps(report, indent=2) + "\n")
    plotting.save_figure(race_figure(report), root / RACE_FIGURE)
