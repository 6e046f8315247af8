"""The race's numbers in the README and docs/race.md, written from reports/race.json.

Plain functions of the reports (fashion_cnn.reproduction.report_text.Reports) that return Markdown;
`fashion_cnn.tools.report_docs` puts each between its page's markers.
"""

from __future__ import annotations

import math
from statistics import mean
from typing import Any

from fashion_cnn.reproduction.report_text import Reports


def race_rows(reports: Reports) -> dict[str, dict[str, Any]]:
    """reports/race.json's rows by preset."""
    return {row["preset"]: row for row in reports.json("reports/race.json")["rows"]}


def race_paragraph(reports: Reports) -> str:
    """The README's race summary: the winner's ratio and accuracy, the large-batch preset, the verdict."""
    race = reports.json("reports/race.json")
    config, rows = race["config"], race_rows(reports)
    winner = rows[race["winner_by_validation"]]
    large = [row for row in rows.values() if row["batch_size"] >= 256]
    reached = "is reached" if race["verdicts"]["target_within_budget"] else "is not reached"
    text = (
        f"`{winner['preset']}` trains in **{winner['time_ratio']:.2f}** of the seed recipe's time "
        f"({winner['train_seconds']:.0f} s against {race['seed']['train_seconds']:,.0f} s) and tests at "
        f"**{winner['test_accuracy']:.4f}**"
    )
    for row in large:
        kept = "keeps" if row["test_accuracy"] >= config["large_batch_accuracy"] else "falls below"
        text += (
            f"; the large-batch `{row['preset']}` preset (batch {row['batch_size']}) {kept} the seed's "
            f"accuracy at **{row['test_accuracy']:.4f}** (run on the {row['ran_as']['device']})"
        )
    return (
        f"{text}. The race's target, {config['target_accuracy']} within {config['budget_ratio']} of the "
        f"seed's time, {reached} on {race['machine']['usable_cpus']} CPU cores ({race['date']})."
    )


def as_run(ran_as: dict[str, str]) -> str:
    """'CPU, float32, XLA off, deterministic' from a race row's read-back settings."""
    xla = "XLA on" if ran_as["jit_compile"] == "True" else "XLA off"
    determinism = "deterministic" if ran_as["deterministic"] == "True" else "nondeterministic"
    return f"{ran_as['device']}, {ran_as['dtype_policy']}, {xla}, {determinism}"


def race_table(reports: Reports) -> str:
    """docs/race.md's table: one row per raced preset."""
    race = reports.json("reports/race.json")
    lines = [
        "| preset | batch | epochs | test accuracy | validation accuracy | training s | `time_ratio` "
        "| as run | MLflow run |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in race["rows"]:
        winner = row["preset"] == race["winner_by_validation"]
        name = f"`{row['preset']}`" + (" (the winner)" if winner else "")
        lines.append(
            f"| {name} | {row['batch_size']} | {row['epochs']} | {row['test_accuracy']:.4f} "
            f"| {row['val_accuracy']:.4f} | {row['train_seconds']:.1f} | {row['time_ratio']:.3f} "
            f"| {as_run(row['ran_as'])} | `{row['mlflow_run_id']}` |"
        )
    return "\n".join(lines)


def race_seed(reports: Reports) -> str:
    """docs/race.md: when and where the race ran, and the seed recipe's timed epochs."""
    race = reports.json("reports/race.json")
    machine, seed, versions = race["machine"], race["seed"], race["versions"]
    epochs = " and ".join(f"{seconds:.1f}" for seconds in seed["epoch_seconds"])
    return (
        f"Measured on {race['date']} by `make race` ({race['race_minutes']} min) on {machine['cpu_model']}, "
        f"{machine['usable_cpus']} cores, {machine['memory_gb']:.0f} GB; Python {versions['python']}, "
        f"TensorFlow {versions['tensorflow']}, Keras {versions['keras']}. The seed recipe: {epochs} s for "
        f"its first {seed['epochs_timed']} epochs, **{seed['train_seconds']:,.0f} s** for {seed['epochs']} "
        f"epochs extrapolated (MLflow run `{seed['mlflow_run_id']}`); its test accuracy, "
        f"{seed['test_accuracy']:.4f}, is from {seed['test_accuracy_from']}."
    )


def race_spread(reports: Reports) -> str:
    """docs/race.md: the winner's test accuracy over the committed seed and the extra ones."""
    race = reports.json("reports/race.json")
    spread = race["winner_spread"]
    first = race_rows(reports)[spread["preset"]]
    runs = [{**first, "seed": "42 (the committed one)"}, *spread["runs"]]
    accuracies = [run["test_accuracy"] for run in runs]
    validations = ", ".join(f"{run['val_accuracy']:.4f}" for run in runs)
    run_ids = ", ".join(f"`{run['mlflow_run_id']}`" for run in runs)
    return (
        f"The winner's spread over seeds (`make race-spread`): test accuracy "
        f"**{', '.join(f'{value:.4f}' for value in accuracies)}** with `seed` "
        f"{', '.join(str(run['seed']) for run in runs)}, a mean of {mean(accuracies):.4f} and a range of "
        f"{(max(accuracies) - min(accuracies)) * 100:.2f} points (validation {validations}; MLflow runs "
        f"{run_ids}), all in `reports/race.json` (`winner_spread`)."
    )


def race_pace(reports: Reports) -> str:
    """The seed recipe's milliseconds per step in the race (its last timed epoch)."""
    facts = reports.profiles["default"]
    steps = math.ceil(facts.train_images / facts.batch_size)
    milliseconds = reports.json("reports/race.json")["seed"]["epoch_seconds"][-1] / steps * 1000
    return f"{milliseconds:.0f} ms per step of {facts.batch_size} images"


def race_budget(reports: Reports) -> str:
    """The training seconds the race's budget allows on the race's machine."""
    race = reports.json("reports/race.json")
    return f"{race['config']['budget_ratio'] * race['seed']['train_seconds']:.0f} s"


def race_findings(reports: Reports) -> str:
    """docs/race.md's findings: the winner against the seed and its record, bfloat16, the large batch."""
    race, rows = reports.json("reports/race.json"), race_rows(reports)
    config, seed = race["config"], race["seed"]
    winner, bf16, large = (
        rows[race["winner_by_validation"]],
        rows.get("small_vgg_one_cycle_bf16"),
        rows.get("gpu"),
    )
    record = reports.json("reports/recipe/metrics.json")
    recorded = record["test"]["accuracy"]
    reached = "" if race["verdicts"]["target_within_budget"] else f"not {config['target_accuracy']}"
    difference = f"within {abs(recorded - winner['test_accuracy']) * 100:.2f} points"
    race_cpu = race["machine"]["cpu_model"]
    if not str(record.get("hardware", "")).startswith(race_cpu):
        same = f"{difference} on another CPU ({race_cpu}; another CPU's kernels change the digits, same seed)"
    elif recorded == winner["test_accuracy"]:
        same = "to the last digit (deterministic ops, same seed)"
    else:
        same = f"{difference} (deterministic ops, same seed)"
    above_seed = (winner["test_accuracy"] - seed["test_accuracy"]) * 100
    lines = [
        f"- **Within the budget, the best is {winner['test_accuracy']:.4f} at {winner['time_ratio']:.2f}, "
        f"{reached}.** `{winner['preset']}` is {above_seed:.1f} points above the seed's CNN in "
        f"{winner['time_ratio']:.2f} of its time; `reports/recipe/metrics.json` records {recorded:.4f} for "
        f"the same preset, which the race reproduced {same}.",
    ]
    if bf16:
        speed_up = winner["train_seconds"] / bf16["train_seconds"]
        test_cost = (winner["test_accuracy"] - bf16["test_accuracy"]) * 100
        validation_cost = (winner["val_accuracy"] - bf16["val_accuracy"]) * 100
        lines.append(
            f"- **mixed_bfloat16 on this CPU (AVX512-BF16): {speed_up:.2f}x the float32 training speed** "
            f"({bf16['train_seconds']:.0f} s against {winner['train_seconds']:.0f} s, the same "
            f"{bf16['epochs']} epochs) for {test_cost:.2f} points of test accuracy "
            f"({bf16['test_accuracy']:.4f} against {winner['test_accuracy']:.4f}) and "
            f"{validation_cost:.2f} of validation accuracy."
        )
    if large:
        kept = large["test_accuracy"] >= config["large_batch_accuracy"]
        lines.append(
            f"- **The large-batch `{large['preset']}` preset {'keeps' if kept else 'does not keep'} the "
            f"seed's accuracy on a CPU: {large['test_accuracy']:.4f} {'≥' if kept else '<'} "
            f"{config['large_batch_accuracy']}**, with batch {large['batch_size']} and {large['epochs']} "
            f"epochs, at {large['time_ratio']:.2f} of the seed's time."
        )
    return "\n".join(lines)
