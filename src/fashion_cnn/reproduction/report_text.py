"""The README's and docs' numbers, written from the report files (reports/*.json, sweep.csv).

Each block is a plain function of the reports that returns Markdown; `fashion_cnn.tools.report_docs`
puts it between `<!-- generated: NAME -->` and `<!-- end -->` in the pages. A `<!-- value: FILE KEY
FORMAT -->` marker quotes one number of a JSON report (KEY a dotted path, FORMAT a Python format spec).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_cnn.errors import DataError
from fashion_cnn.utils import records

# The command that writes each report again, for the one-line error when one is missing or broken.
REBUILD = {
    "reports/metrics.json": "run `dvc repro`",
    "reports/recipe/metrics.json": "run `make recipe-finalist`",
    "reports/quick/metrics.json": "run `python -m fashion_cnn.tools.reproduce --profile quick --record`",
    "reports/race.json": "run `make race` (and `make race-spread`)",
    "reports/recipe/sweep.csv": "run `make recipe-report`",
    "reports/benchmarks.json": "run `make bench`",
    "reports/startup.json": "run `make bench-startup`",
}
# The README's profiles: where each one's record lives and what the table calls it.
PROFILE_RECORDS = {
    "default": ("reports/metrics.json", "default"),
    "recipe": ("reports/recipe/metrics.json", "the race winner"),
    "quick": ("reports/quick/metrics.json", "quick"),
}


@dataclass(frozen=True)
class ProfileFacts:
    """What a profile's composed config says: its preset, model, size and schedule."""

    experiment: str | None
    model_name: str
    parameters: int
    epochs: int
    batch_size: int
    train_images: int


class Reports:
    """The report files under `root`, each read once, with the profiles' composed facts."""

    def __init__(self, root: Path, profiles: dict[str, ProfileFacts]) -> None:
        self.root = root
        self.profiles = profiles
        self._cache: dict[str, Any] = {}

    def json(self, relative: str) -> Any:
        """A JSON report, parsed; a DataError naming it and the command that rewrites it."""
        if relative not in self._cache:
            rebuild = REBUILD.get(relative, "regenerate it")
            self._cache[relative] = records.read_json(self.root / relative, rebuild)
        return self._cache[relative]

    def csv_rows(self, relative: str) -> list[dict[str, str]]:
        """A CSV report's rows as dicts."""
        text = records.read_text(self.root / relative, REBUILD.get(relative, "regenerate it"))
        return list(csv.DictReader(io.StringIO(text)))


def lookup(record: Any, dotted_key: str, where: str) -> Any:
    """record[a][b] for 'a.b' (list items by index); a DataError naming the file and key if absent."""
    value = record
    for part in dotted_key.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise DataError(
                f"{where}: no {dotted_key!r} (a docs marker quotes it); fix the marker or the report"
            )
    return value


def duration(seconds: float) -> str:
    """'73.5 min' from 600 s on, '326 s' from 100 s, '12.4 s' below."""
    if seconds >= 600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s" if seconds >= 100 else f"{seconds:.1f} s"


def results_table(reports: Reports) -> str:
    """The README's results: one row per profile from its metrics.json, the model from its config."""
    lines = [
        "| profile | model | data | epochs | test accuracy | training time | machine |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for profile, (path, label) in PROFILE_RECORDS.items():
        metrics, facts = reports.json(path), reports.profiles[profile]
        name = f"`{facts.experiment}`, {label}" if facts.experiment and profile != "quick" else f"`{profile}`"
        lines.append(
            f"| {name} (`{path}`) | `{facts.model_name}`, {facts.parameters:,} parameters "
            f"| {facts.train_images:,} train / {metrics['test']['images']:,} test images | {facts.epochs} "
            f"| **{metrics['test']['accuracy']:.4f}** | {duration(metrics['train_seconds'])} "
            f"| {metrics['hardware']} |"
        )
    return "\n".join(lines)


def recipe_results(reports: Reports) -> str:
    """docs/recipe.md: the finalist's first record (sweep.csv), its reproduction and the default."""
    finalist = [row for row in reports.csv_rows("reports/recipe/sweep.csv") if row["test_accuracy"]][-1]
    recipe, default = reports.json("reports/recipe/metrics.json"), reports.json("reports/metrics.json")
    first_seconds = float(finalist["train_minutes"]) * 60
    rows = [
        ("the finalist (first record, `reports/recipe/sweep.csv`)", float(finalist["test_accuracy"]),
         float(finalist["val_accuracy"]), first_seconds),
        ("reproduced (`reports/recipe/metrics.json`)", recipe["test"]["accuracy"],
         recipe["validation"]["accuracy"], recipe["train_seconds"]),
        ("default, the seed's CNN (`reports/metrics.json`)", default["test"]["accuracy"],
         default["validation"]["accuracy"], default["train_seconds"]),
    ]  # fmt: skip
    lines = ["| run | test accuracy | validation accuracy | training time |", "|---|---:|---:|---:|"]
    lines += [
        f"| {name} | {test:.4f} | {validation:.4f} | {duration(seconds)} |"
        for name, test, validation, seconds in rows
    ]
    return "\n".join(lines)


def recipe_sweep(reports: Reports) -> str:
    """docs/recipe.md: reports/recipe/sweep.csv as a table, with each run's seconds per epoch."""
    lines = [
        "| model | epochs | peak learning rate | random erasing | validation accuracy | test accuracy "
        "| training minutes | s per epoch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in reports.csv_rows("reports/recipe/sweep.csv"):
        test = f"{float(row['test_accuracy']):.4f}" if row["test_accuracy"] else ""
        finalist = " (finalist)" if row["test_accuracy"] else ""
        per_epoch = float(row["train_minutes"]) * 60 / int(row["train.epochs"])
        lines.append(
            f"| `{row['model.name']}`{finalist} | {row['train.epochs']} "
            f"| {float(row['train.learning_rate']):g} | {float(row['train.augmentation.random_erasing']):g} "
            f"| {float(row['val_accuracy']):.4f} | {test} | {float(row['train_minutes']):.1f} "
            f"| {per_epoch:.0f} |"
        )
    return "\n".join(lines)


def recipe_epoch_seconds(reports: Reports) -> str:
    """docs/recipe.md: each swept model's range of seconds per epoch, from sweep.csv."""
    by_model: dict[str, list[float]] = {}
    for row in reports.csv_rows("reports/recipe/sweep.csv"):
        per_epoch = float(row["train_minutes"]) * 60 / int(row["train.epochs"])
        by_model.setdefault(row["model.name"], []).append(per_epoch)
    return " against ".join(
        f"`{model}` {min(seconds):.0f}–{max(seconds):.0f} s per epoch" for model, seconds in by_model.items()
    )
